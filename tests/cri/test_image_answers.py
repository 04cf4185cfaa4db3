"""ImageStatus, ListImages, RemoveImage and ImageFsInfo on imaged's CRI socket answer as containerd's
own CRI does, for images pulled through imaged and through containerd's CRI alike."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import grpc
import pytest

from imaged.pb.runtime.v1 import api_pb2
from tests.cri.conftest import Env
from tests.cri.test_pull_image import pull_image, records
from tests.support import archives, cri
from tests.support.containerd import PrivateContainerd
from tests.support.images import push_multiplatform_image

FIELDS = ("id", "repo_tags", "repo_digests", "size", "uid", "username", "spec", "pinned")


@dataclasses.dataclass
class UserImage(archives.Image):
    """An image whose config names the user to run as (uid or name)."""

    user: str = ""

    @property
    def config(self) -> bytes:
        doc = json.loads(super().config)
        doc["config"]["User"] = self.user
        return json.dumps(doc, separators=(",", ":")).encode()


def spec(image: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image)


def fields(img: api_pb2.Image) -> dict[str, Any]:
    return {f: getattr(img, f) for f in FIELDS}


def status(socket: str, image: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    with cri.images(socket) as stub:
        return stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(image), verbose=verbose), timeout=30)


def listing(socket: str, image: str | None = None) -> dict[str, dict[str, Any]]:
    req = api_pb2.ListImagesRequest()
    if image is not None:
        req.filter.image.image = image
    with cri.images(socket) as stub:
        return {img.id: fields(img) for img in stub.ListImages(req, timeout=30).images}


def containerd_pull(cd: PrivateContainerd, image: str) -> str:
    """A pull by containerd's own CRI (what the kubelet gets without imaged)."""
    with cri.images(cd.socket) as stub:
        return str(stub.PullImage(api_pb2.PullImageRequest(image=spec(image)), timeout=300).image_ref)


def remove(socket: str, image: str) -> None:
    with cri.images(socket) as stub:
        stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(image)), timeout=60)


def names_of(cd: PrivateContainerd, repo: str, image_id: str) -> list[str]:
    return sorted(n for n in records(cd) if n.startswith(repo) or n == image_id)


@pytest.mark.parametrize(
    "kind",
    ["single", "user-uid", "user-name", "multi-platform"],
)
def test_status_and_list_are_what_containerds_own_pull_gives(
    env: Env, containerd: PrivateContainerd, kind: str
) -> None:
    repo = f"{env.reg.host}/signed/answers-{kind}"
    tag = f"{repo}:v1"
    if kind == "multi-platform":
        digest = push_multiplatform_image(env.reg, f"signed/answers-{kind}", "v1").index_digest
        env.sign(env.reg, f"signed/answers-{kind}", digest)
    else:
        user = {"user-uid": "1234:55", "user-name": "daemon"}.get(kind, "")
        img = UserImage(archives.simple_image(kind).layers, cmd=["/bin/echo", kind], user=user)
        env.push_signed(env.reg, f"signed/answers-{kind}", "v1", img)
    # What containerd's CRI answers after pulling the tag itself...
    expected_id = containerd_pull(containerd, tag)
    expected = status(containerd.socket, tag).image
    expected_list = listing(containerd.socket)[expected_id]
    expected_records = names_of(containerd, repo, expected_id)
    remove(containerd.socket, tag)
    assert not status(containerd.socket, tag).HasField("image")
    # ...is what it answers, and what imaged answers, after imaged's verified, pinned pull.
    assert pull_image(env, tag) == expected_id
    assert names_of(containerd, repo, expected_id) == expected_records
    for socket in (containerd.socket, env.cri_socket):
        for name in (tag, f"{repo}@{expected.repo_digests[0].rsplit('@', 1)[1]}", expected_id):
            got = status(socket, name)
            assert got.HasField("image"), (socket, name)
            assert fields(got.image) == fields(expected), (socket, name)
        assert listing(socket)[expected_id] == expected_list
    # A filter as containerd applies it (1.6 lists everything whatever the filter).
    assert listing(env.cri_socket, tag) == listing(containerd.socket, tag)
    assert listing(env.cri_socket, tag)[expected_id] == expected_list
    if kind == "user-uid":
        assert expected.uid.value == 1234 and not expected.username
    if kind == "user-name":
        assert expected.username == "daemon" and not expected.HasField("uid")
    # The whole listing, and a missing image, alike.
    assert listing(env.cri_socket) == listing(containerd.socket)
    for socket in (containerd.socket, env.cri_socket):
        assert not status(socket, f"{repo}:missing").HasField("image")
    verbose = status(env.cri_socket, tag, verbose=True)
    assert json.loads(verbose.info["info"])["chainID"].startswith("sha256:")


@pytest.mark.parametrize("form", ["tag", "repo@digest", "id"])
def test_remove_behaves_as_containerds_cri(env: Env, containerd: PrivateContainerd, form: str) -> None:
    img = archives.simple_image(f"remove-{form}")
    repo_path = f"signed/remove-{form.replace('@', '-')}"
    digest = env.push_signed(env.reg, repo_path, "v1", img)
    env.push_signed(env.reg, repo_path, "v2", img)  # a second tag of the same image
    repo = f"{env.reg.host}/{repo_path}"
    name = {"tag": f"{repo}:v1", "repo@digest": f"{repo}@{digest}", "id": img.config_digest}[form]
    outcome = {}
    for who, socket, pull in (
        ("containerd", containerd.socket, lambda ref: containerd_pull(containerd, ref)),
        ("imaged", env.cri_socket, lambda ref: pull_image(env, ref)),
    ):
        for tag in ("v1", "v2"):
            assert pull(f"{repo}:{tag}") == img.config_digest
        before = names_of(containerd, repo, img.config_digest)
        remove(socket, name)
        left = names_of(containerd, repo, img.config_digest)
        seen = {n: status(socket, n).HasField("image") for n in before}
        remove(socket, name)  # removing what is gone succeeds
        outcome[who] = (before, left, seen)
        for n in left:  # start the next round from nothing
            remove(containerd.socket, n)
    assert outcome["imaged"] == outcome["containerd"]


def test_image_fs_info_is_containerds(env: Env, containerd: PrivateContainerd) -> None:
    with cri.images(containerd.socket) as stub:
        theirs = stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=30)
    with cri.images(env.cri_socket) as stub:
        ours = stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=30)
    assert [f.fs_id.mountpoint for f in ours.image_filesystems] == [
        f.fs_id.mountpoint for f in theirs.image_filesystems
    ]
    assert ours.image_filesystems[0].fs_id.mountpoint.startswith(str(containerd.dir))
    assert ours.image_filesystems[0].timestamp > 0


def test_odd_names_get_containerds_answers(env: Env, containerd: PrivateContainerd) -> None:
    def outcome(socket: str, name: str) -> tuple[Any, ...]:
        try:
            got = status(socket, name)
        except grpc.RpcError as e:
            return ("error", e.code(), e.details())
        return ("ok", got.HasField("image"), fields(got.image))

    for name in ("Not/Valid", "", "sha256:" + "0" * 64, "nothing-here:v0", "a@sha256:bad"):
        assert outcome(env.cri_socket, name) == outcome(containerd.socket, name), name
        remove_outcome = []
        for socket in (containerd.socket, env.cri_socket):
            try:
                remove(socket, name)
                remove_outcome.append(("ok",))
            except grpc.RpcError as e:
                remove_outcome.append(("error", e.code(), e.details()))
        assert remove_outcome[0] == remove_outcome[1], name
    with pytest.raises(grpc.RpcError) as e:
        pull_image(env, "Not A Reference")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
