"""Gate sets in the layouts Ultralytics' own datasets come in, read as the flat one is; each missing piece named."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

from quality import gate_sets  # noqa: E402
from quality.tasks import task_of  # noqa: E402
from tests.helpers import ROOT, SAMPLES  # noqa: E402

NAMES = {0: "scratch", 1: "dent", 2: "stain"}  # samples/data.yaml
CLASSIFY = SAMPLES / "gates" / "classify"


def copy_samples(images: Path, labels: Path | None) -> None:
    """Our detect samples (6 images, 9 defects) into an images folder and, unless None, a labels folder."""
    images.mkdir(parents=True, exist_ok=True)
    for image in SAMPLES.glob("*.jpg"):
        shutil.copy(image, images)
    if labels is not None:
        labels.mkdir(parents=True, exist_ok=True)
        for label in (SAMPLES / "labels").glob("*.txt"):
            shutil.copy(label, labels)


def data_yaml(folder: Path, name: str = "data.yaml", **keys) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump({**keys, "names": NAMES}, sort_keys=False))
    return folder / name


def by_image(items: list[dict]) -> dict[str, list[tuple[str, list[float]]]]:
    """What a detect gate set says of each image, keyed by file name."""
    return {
        i["image"].name: sorted((o["class"], [round(v, 3) for v in o["bbox"]]) for o in i["objects"]) for i in items
    }


def ultralytics_split(root: Path) -> Path:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    return data_yaml(root, path=".", train="images/train", val="images/val").parent


def no_path_key(root: Path) -> Path:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    return data_yaml(root, val="images/val").parent


def absolute_path_elsewhere(root: Path) -> Path:
    copy_samples(root / "dataset" / "images" / "val", root / "dataset" / "labels" / "val")
    return data_yaml(root / "configs", path=str(root / "dataset"), val="images/val").parent


def relative_path_up(root: Path) -> Path:
    copy_samples(root / "datasets" / "parts" / "images" / "val", root / "datasets" / "parts" / "labels" / "val")
    return data_yaml(root / "configs", path="../datasets/parts", val="images/val").parent


def val_list_of_two_folders(root: Path) -> Path:
    copy_samples(root / "images" / "a", root / "labels" / "a")
    for split in ("images", "labels"):  # half the files moved to a second folder
        (root / split / "b").mkdir()
        for path in sorted((root / split / "a").iterdir())[::2]:
            path.rename(root / split / "b" / path.name)
    return data_yaml(root, val=["images/a", "images/b"]).parent


def val_txt_listing(root: Path) -> Path:
    copy_samples(root / "images" / "all", root / "labels" / "all")
    (root / "val.txt").write_text("".join(f"./images/all/{p.name}\n" for p in SAMPLES.glob("*.jpg")))
    return data_yaml(root, val="val.txt").parent


def images_val_without_val_key(root: Path) -> Path:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    copy_samples(root / "images" / "train", None)  # never read: the gate takes the val split
    return data_yaml(root).parent


def flat_images_and_labels(root: Path) -> Path:
    copy_samples(root / "images", root / "labels")
    return data_yaml(root).parent


def dataset_yaml_given_itself(root: Path) -> Path:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    return data_yaml(root, "parts.yaml", val="images/val")


LAYOUTS = [
    ultralytics_split,
    no_path_key,
    absolute_path_elsewhere,
    relative_path_up,
    val_list_of_two_folders,
    val_txt_listing,
    images_val_without_val_key,
    flat_images_and_labels,
    dataset_yaml_given_itself,
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_ultralytics_layouts_read_as_the_flat_set_does(tmp_path, layout):
    source = layout(tmp_path)
    task, items = gate_sets.load_gate_set(source, task="detect")  # no gate.yaml: the task is the caller's
    assert task == "detect"
    _, flat = gate_sets.load_gate_set(SAMPLES)  # images beside labels/, gate.yaml and data.yaml
    assert by_image(items) == by_image(flat)
    assert sum(len(i["objects"]) for i in items) == 9


def test_gate_yaml_task_wins_and_without_either_the_task_is_asked_for(tmp_path):
    source = ultralytics_split(tmp_path)
    with pytest.raises(gate_sets.GateSetError, match=f"write task: detect .* in {source / 'gate.yaml'}"):
        gate_sets.load_gate_set(source)
    (source / "gate.yaml").write_text("task: segment\n")
    assert gate_sets.find_gate_set(source, "detect").task == "segment"  # packaging then refuses the mismatch
    (source / "gate.yaml").write_text("task: detect\nmetric: top1\n")
    with pytest.raises(gate_sets.GateSetError, match="write metric: recall"):
        gate_sets.find_gate_set(source)


def copy_classify(dest: Path) -> None:
    shutil.copytree(CLASSIFY, dest, ignore=shutil.ignore_patterns("gate.yaml"))


def test_classify_takes_class_folders_or_ultralytics_val_then_test_split(tmp_path):
    _, flat = gate_sets.load_gate_set(CLASSIFY)
    want = sorted((i["image"].name, i["class"]) for i in flat)

    def read(root: Path) -> list[tuple[str, str]]:
        task, items = gate_sets.load_gate_set(root, task="classify")
        assert task == "classify"
        return sorted((i["image"].name, i["class"]) for i in items)

    copy_classify(tmp_path / "flat")
    assert read(tmp_path / "flat") == want
    copy_classify(tmp_path / "split" / "test")
    copy_classify(tmp_path / "split" / "train")  # never read
    assert read(tmp_path / "split") == want
    (tmp_path / "split" / "val" / "nut").mkdir(parents=True)
    one = next((tmp_path / "split" / "test" / "nut").iterdir())
    shutil.copy(one, tmp_path / "split" / "val" / "nut")
    assert read(tmp_path / "split") == [(one.name, "nut")]  # val/ comes before test/


def missing_data_yaml(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    return root, [f"{root}/data.yaml not found", "names: {0: person, 1: car}", "val: images/val"]


def other_dataset_yaml(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    data_yaml(root, "coco8.yaml", val="images/val")
    return root, [f"{root}/data.yaml not found", f"--gate-data {root}/coco8.yaml"]


def no_val_key_nor_val_images(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "train", root / "labels" / "train")
    return data_yaml(root).parent, [
        f"{root}/data.yaml has no val:",
        f"{root}/images holds only the folders train",
        "val: images/val",
    ]


def val_folder_not_there(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "valid", root / "labels" / "valid")
    return data_yaml(root, val="images/val").parent, [
        f"{root}/data.yaml: val: images/val is {root}/images/val, which does not exist",
        "point val: at their folder",
    ]


def path_not_there(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    return data_yaml(root, path="../datasets/parts", val="images/val").parent, [
        f"{root}/data.yaml: path: ../datasets/parts is {root.parent}/datasets/parts, which is not a folder",
        "fix path:",
    ]


def no_labels_folder(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "val", None)
    return data_yaml(root, val="images/val").parent, [
        f"no labels folder {root}/labels/val for the images in {root}/images/val",
        "clean_01.txt for clean_01.jpg",
        "replacing /images/ with /labels/",
    ]


def labels_elsewhere(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "val", root / "annotations")
    (root / "labels" / "val").mkdir(parents=True)
    return data_yaml(root, val="images/val").parent, [f"{root}/labels/val has no label file for any of the 6 images"]


def no_images(root: Path) -> tuple[Path, list[str]]:
    (root / "images" / "val").mkdir(parents=True)
    copy_samples(root / "jpegs", root / "labels" / "val")
    return data_yaml(root, val="images/val").parent, [f"val: images/val ({root}/images/val) holds no images (.bmp"]


def no_names(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images" / "val", root / "labels" / "val")
    (root / "data.yaml").write_text("val: images/val\n")
    return root, [f"{root}/data.yaml has no names", "names: {0: person, 1: car}"]


def label_of_an_unknown_class(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images", root / "labels")
    (root / "labels" / "dent_01.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    return data_yaml(root).parent, [f"{root}/labels/dent_01.txt:1: class 7 is not in the names of {root}/data.yaml"]


def label_line_too_short(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images", root / "labels")
    (root / "labels" / "dent_01.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.5\n")
    return data_yaml(root).parent, [f"{root}/labels/dent_01.txt:2: '1 0.5' is not a detect label"]


def not_an_image(root: Path) -> tuple[Path, list[str]]:
    copy_samples(root / "images", root / "labels")
    (root / "images" / "dent_01.jpg").write_bytes(b"not a jpeg")
    return data_yaml(root).parent, [f"{root}/images/dent_01.jpg is not a readable image"]


def classify_without_class_folders(root: Path) -> tuple[Path, list[str]]:
    copy_classify(root / "train")
    return root, [f"no gate images in {root}", f"{root}/val/<class>/*.jpg", "train/ is not used"]


MISSING = [
    missing_data_yaml,
    other_dataset_yaml,
    no_val_key_nor_val_images,
    val_folder_not_there,
    path_not_there,
    no_labels_folder,
    labels_elsewhere,
    no_images,
    no_names,
    label_of_an_unknown_class,
    label_line_too_short,
    not_an_image,
    classify_without_class_folders,
]


@pytest.mark.parametrize("case", MISSING, ids=lambda f: f.__name__)
def test_each_missing_piece_is_named_with_its_path_and_the_fix(tmp_path, case):
    source, expected = case(tmp_path / "set")
    task = "classify" if case is classify_without_class_folders else "detect"
    with pytest.raises(gate_sets.GateSetError) as raised:
        gate_sets.load_gate_set(source, task=task)
    message = str(raised.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_the_archive_layout_reads_back_the_same_and_rewrites_byte_for_byte(tmp_path):
    source = val_list_of_two_folders(tmp_path / "source")
    gate = gate_sets.find_gate_set(source, "detect")
    spec = {"task": "detect", "metric": "recall", "threshold": 0.5}
    written = gate_sets.write_gate_set(gate, tmp_path / "archive" / "gate", spec)
    assert sorted(p.name for p in written.iterdir()) == ["data.yaml", "gate.yaml", "images", "labels"]
    assert yaml.safe_load((written / "data.yaml").read_text()) == {"val": "images", "names": NAMES}
    assert gate_sets.gate_spec(written) == spec
    assert by_image(gate_sets.load_gate_set(written)[1]) == by_image(gate_sets.load_gate_set(source, "detect")[1])
    again = gate_sets.write_gate_set(
        gate_sets.find_gate_set(written), tmp_path / "again", gate_sets.read_gate_yaml(written)
    )
    files = sorted(p.relative_to(written) for p in written.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((written / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_clashing_file_names_from_two_folders_are_kept_apart(tmp_path):
    root = tmp_path / "source"
    copy_samples(root / "images" / "a", root / "labels" / "a")
    copy_samples(root / "images" / "b", root / "labels" / "b")
    (root / "labels" / "b" / "dent_01.txt").write_text("")  # b's dent_01 shows no defect
    data_yaml(root, val=["images/a", "images/b"])
    written = gate_sets.write_gate_set(gate_sets.find_gate_set(root, "detect"), tmp_path / "gate", {"task": "detect"})
    _, items = gate_sets.load_gate_set(written)
    assert len(items) == 12 and sum(len(i["objects"]) for i in items) == 17


def test_classify_archive_layout_is_one_folder_per_class(tmp_path):
    copy_classify(tmp_path / "source" / "val")
    gate = gate_sets.find_gate_set(tmp_path / "source", "classify")
    written = gate_sets.write_gate_set(gate, tmp_path / "gate", {"task": "classify"})
    assert sorted(p.name for p in written.iterdir() if p.is_dir()) == sorted(set(gate.classes))
    _, items = gate_sets.load_gate_set(written)
    assert sorted((i["image"].name, i["class"]) for i in items) == sorted(
        (i["image"].name, i["class"]) for i in gate_sets.load_gate_set(CLASSIFY)[1]
    )


def test_a_pose_gate_set_without_keypoint_names_scores_a_model_that_names_them(tmp_path):
    """kpt_names is optional in Ultralytics datasets; the committed pose model names its keypoints."""
    from quality.ultralytics_answers import reference_answers

    shutil.copytree(SAMPLES / "gates" / "pose", tmp_path / "pose", ignore=shutil.ignore_patterns("*.yaml"))
    (tmp_path / "pose" / "data.yaml").write_text("val: images\nnames: {0: tab}\nkpt_shape: [4, 3]\n")
    _, unnamed = gate_sets.load_gate_set(tmp_path / "pose", task="pose")
    assert [k[3] for k in unnamed[0]["objects"][0]["keypoints"]] == ["0", "1", "2", "3"]
    _, named = gate_sets.load_gate_set(SAMPLES / "gates" / "pose")
    weights = ROOT / "models" / "weights" / "tasks" / "pose" / "best.pt"
    answers = reference_answers(weights, [i["image"] for i in named], imgsz=256)
    assert {k["name"] for d in answers[0]["detections"] for k in d["keypoints"]} == {"tip", "base", "left", "right"}
    measured = task_of("pose").gate_metric(named, answers)
    assert measured == pytest.approx(gate_sets.gate_spec(SAMPLES / "gates" / "pose")["measured"], abs=1e-4)
    assert task_of("pose").gate_metric(unnamed, answers) == measured
