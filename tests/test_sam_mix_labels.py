"""`metaseg adapt --method sam_mix --labels`: a generic labels CSV (id or file-name column + label column)."""
from __future__ import annotations

import pytest

from metaseg.errors import MetasegError
from metaseg.jobs.sam_mix import label_key, match_labels, read_labels_csv


def _csv(tmp_path, text: str, name: str = "labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_isic_class_table_by_column_name(tmp_path):
    # the shape of ISIC-2017_*_Classes.csv: image_id,melanoma with 0.0/1.0
    path = _csv(tmp_path, "image_id,melanoma\nISIC_0000000,0.0\nISIC_0000002,1.0\nISIC_0000003,0\n")
    assert read_labels_csv(path, label_column="melanoma") == {"ISIC_0000000": 0, "ISIC_0000002": 1, "ISIC_0000003": 0}
    assert read_labels_csv(path) == read_labels_csv(path, label_column="MELANOMA")  # two columns: the other one


def test_file_name_column_and_named_label_among_several(tmp_path):
    path = _csv(tmp_path, "site,filename,diagnosis,age\nA,scans/benign (1).png,benign,40\nB,normal (2).PNG,normal,51\n"
                          "C,malignant (1).png,malignant,62\n")
    labels = read_labels_csv(path, absent_class="normal", label_column="diagnosis")
    assert labels == {"scans/benign (1).png": 1, "normal (2).PNG": 0, "malignant (1).png": 1}
    ids = ["benign/benign (1)", "normal/normal (2)", "malignant/malignant (1)", "malignant/malignant (2)"]
    assert match_labels(labels, ids) == {"benign/benign (1)": 1, "normal/normal (2)": 0, "malignant/malignant (1)": 1}
    assert read_labels_csv(path, label_column="diagnosis", id_column="site", absent_class="normal") == {"A": 1, "B": 0, "C": 1}
    with pytest.raises(MetasegError, match="line 2: numeric label '40' is not in"):
        read_labels_csv(path, label_column="age")  # an age is not a label


def test_ids_as_is_win_and_shared_stems_match_nothing(tmp_path):
    ids = ["a/x", "b/x", "c/y"]
    assert match_labels({"a/x": 0, "x.png": 1, "y.jpg": 1}, ids) == {"a/x": 0, "c/y": 1}  # x.png is ambiguous
    assert label_key("dir\\sub\\ISIC_1.jpg") == "ISIC_1" and label_key("study.v2") == "study.v2"  # not an image suffix


def test_headerless_two_columns_still_read(tmp_path):
    assert read_labels_csv(_csv(tmp_path, "case1,yes\ncase2,absent\ncase3,tumour\n")) == {"case1": 1, "case2": 0, "case3": 1}


@pytest.mark.parametrize("text, options, message", [
    ("image_id,melanoma\nISIC_1,1\n", {"label_column": "nevus"}, "no column 'nevus' for --label-column (columns: image_id, melanoma)"),
    ("image_id,melanoma\nISIC_1,1\n", {"id_column": "file"}, "no column 'file' for --id-column"),
    ("image_id,melanoma,keratosis\nISIC_1,1,0\n", {}, "3 columns (image_id, melanoma, keratosis); name the label one with --label-column"),
    ("id,score\nx,2.5\n", {}, "line 2: numeric label '2.5' is not in [0, 1]"),
    ("id,label\nx,1\ny,\n", {}, "line 3: empty label"),
    ("id,label\nx\n", {}, "line 2: 1 columns, expected at least 2"),
    ("id,label\n", {}, "a header but no rows"),
    ("\n\n", {}, "no rows"),
    ("id\nx\n", {}, "needs two columns id,label"),
    ("image_id,melanoma\nISIC_1,1\n", {"label_column": "image_id"}, "is also the id column"),
])
def test_bad_csv_is_one_line_naming_the_file(tmp_path, text, options, message):
    path = _csv(tmp_path, text)
    with pytest.raises(MetasegError) as err:
        read_labels_csv(path, **options)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_undecodable_csv_is_one_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"id,label\n\xff\xfe\x00bad,1\n")
    with pytest.raises(MetasegError, match="not a readable CSV") as err:
        read_labels_csv(path)
    assert str(path) in str(err.value)


def test_adapt_cli_passes_the_column_options(tmp_path, capsys):
    from metaseg.cli import main

    path = _csv(tmp_path, "image_id,melanoma\nISIC_1,1\n")
    support = tmp_path / "support"
    support.mkdir()
    argv = ["adapt", "--method", "sam_mix", "--support", str(support), "--images", str(support), "--out",
            str(tmp_path / "o"), "--labels", str(path), "--label-column", "diagnosis"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no column 'diagnosis' for --label-column" in err and "\n" not in err
