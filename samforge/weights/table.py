"""The one table of official weights samforge fetches by name: where each released file lives, its name, size and
SHA-256, and the model type it holds.

Hashes and sizes were taken from public records of the released files, never computed here or guessed:
- SAM (v1): the files linked from the segment-anything README (``dl.fbaipublicfiles.com/segment_anything``); SHA-256
  and size as the Git LFS records of the same files on Hugging Face list them (e.g. ``xhk/ASAM``,
  ``doublelotus/Dismantle``), and as many independent download scripts pin them (micro-sam's checksum table,
  3D Slicer's SegmentWithSAM). The file name's suffix (``01ec64``) is the file's MD5 prefix, not its SHA-256.
- SAM 2 and SAM 2.1: the files linked from the sam2 README (``dl.fbaipublicfiles.com/segment_anything_2``), which are
  also the files of the official Hugging Face repositories ``facebook/sam2-hiera-*`` and ``facebook/sam2.1-hiera-*``;
  SHA-256 and size are the LFS ``oid sha256:`` and ``size`` of those files.
- MedSAM: the released ``medsam_vit_b.pth`` (MedSAM README's Google Drive folder, also Zenodo record 10689643).
  SHA-256 and size as several independent projects record the file; Zenodo lists its MD5.
A hash that cannot be found is written as :data:`UNKNOWN` (the file is then checked by size and MD5 where known).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from samforge.weights.download import Expected

UNKNOWN = "unknown"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MD5_HEX = re.compile(r"^[0-9a-f]{32}$")

SAM_HOST = "https://dl.fbaipublicfiles.com/segment_anything"
SAM2_HOST = "https://dl.fbaipublicfiles.com/segment_anything_2"
HF = "https://huggingface.co"


@dataclass(frozen=True)
class OfficialWeights:
    """One released checkpoint file: ``urls`` are tried in order (the first is the official host)."""

    name: str  # what a user types: sam_vit_b, sam2.1_hiera_tiny, ...
    model_type: str  # the samforge model type it holds: vit_b, sam2.1_hiera_t, ...
    filename: str  # the released file name, also its name in the cache
    urls: tuple[str, ...]
    size: int | None  # bytes; None when unknown
    sha256: str  # 64 lower-case hex digits, or UNKNOWN
    md5: str | None = None  # a second check where the publisher lists one
    hf_repo: str | None = None  # the Hugging Face repository holding the same file (the official from_pretrained id)

    def expected(self) -> Expected:
        """What a downloaded copy must be: this size and these hashes (an unknown one is not checked)."""
        return Expected(self.size, None if self.sha256 == UNKNOWN else self.sha256, self.md5)


def _sam(kind: str, filename: str, size: int, sha256: str) -> OfficialWeights:
    return OfficialWeights(f"sam_{kind}", kind, filename, (f"{SAM_HOST}/{filename}",), size, sha256)


def _sam2(version: str, size_name: str, short: str, date: str, size: int, sha256: str) -> OfficialWeights:
    filename = f"{version}_hiera_{size_name}.pt"
    repo = f"facebook/{version}-hiera-{size_name.replace('_', '-')}"
    urls = (f"{SAM2_HOST}/{date}/{filename}", f"{HF}/{repo}/resolve/main/{filename}")
    return OfficialWeights(f"{version}_hiera_{size_name}", f"{version}_hiera_{short}", filename, urls, size, sha256,
                           hf_repo=repo)


WEIGHTS: dict[str, OfficialWeights] = {
    w.name: w
    for w in (
        _sam("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
             "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
        _sam("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
             "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
        _sam("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
             "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
        _sam2("sam2", "tiny", "t", "072824", 155_906_050,
              "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125"),
        _sam2("sam2", "small", "s", "072824", 184_309_650,
              "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3"),
        _sam2("sam2", "base_plus", "b+", "072824", 323_493_298,
              "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071"),
        _sam2("sam2", "large", "l", "072824", 897_952_466,
              "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b"),
        _sam2("sam2.1", "tiny", "t", "092824", 156_008_466,
              "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
        _sam2("sam2.1", "small", "s", "092824", 184_416_285,
              "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
        _sam2("sam2.1", "base_plus", "b+", "092824", 323_606_802,
              "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
        _sam2("sam2.1", "large", "l", "092824", 898_083_611,
              "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
        OfficialWeights("medsam_vit_b", "vit_b", "medsam_vit_b.pth",
                        ("https://zenodo.org/records/10689643/files/medsam_vit_b.pth?download=1",),
                        375_049_145, "34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
                        md5="3bb6db55bd0c9ca30b61248bca72f8d6"),
    )
}
# the official ``from_pretrained`` ids -> table names
HF_IDS: dict[str, str] = {w.hf_repo: w.name for w in WEIGHTS.values() if w.hf_repo}


def official(name: str) -> OfficialWeights | None:
    """The table entry of an official name (``sam_vit_b``) or Hugging Face id (``facebook/sam2.1-hiera-tiny``)."""
    if not isinstance(name, str):
        raise TypeError(f"an official weights name must be a str, got {type(name).__name__}")
    return WEIGHTS.get(name) or WEIGHTS.get(HF_IDS.get(name, ""))


def model_type_of(name: str) -> str | None:
    """The samforge model type an official name or Hugging Face id implies (``sam_vit_b`` -> ``vit_b``), else None."""
    entry = official(name) if isinstance(name, str) else None
    return entry.model_type if entry else None
