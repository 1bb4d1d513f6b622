"""The contracts, checked in DuckDB: a table that breaks a rule fails it, naming the rows, file and value."""

import shutil

import duckdb
import pytest

from ft_assets.lib.config import CorpusConfig, DatasetConfig
from ft_assets.lib.datasets.cleaning import build_dataset
from ft_assets.lib.ingest.readers import read_corpus, write_raw
from ft_assets.lib.schemas import RAW_ROWS, SAMPLE_ROWS, check, clean_rows_contract
from ft_assets_tests.conftest import LABELS, ticket_rows, write_csv

DATASET = DatasetConfig(name="d", corpus="c", labels=LABELS, max_chars=100)
# The first train row: the one each case breaks.
FIRST_TRAIN = """row_id = (SELECT min(row_id) FROM datasets."d" WHERE split = 'train')"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A raw corpus and its dataset, built once by the real steps: both tables keep their contracts."""
    folder = tmp_path_factory.mktemp("built")
    write_csv(folder / "c" / "a.csv", ticket_rows(10))
    with duckdb.connect(str(folder / "w.duckdb")) as conn:
        with read_corpus(CorpusConfig(name="c", path="c", format="csv", label_field="label"), folder / "c") as raw:
            write_raw(conn, "c", raw)
        build_dataset(conn, DATASET)
        assert check(conn, "raw.c", RAW_ROWS) == [] and check(conn, "datasets.d", clean_rows_contract(DATASET)) == []
    return folder


@pytest.fixture
def warehouse(built, tmp_path):
    """A copy of the built warehouse, for a test to break."""
    shutil.copy(built / "w.duckdb", tmp_path / "w.duckdb")
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        yield conn


@pytest.fixture
def uri(built):
    return (built / "c" / "a.csv").as_uri()


def broken(conn, assignment: str, table: str = 'datasets."d"', where: str = FIRST_TRAIN) -> int:
    """Applies `assignment` to one row; its row number."""
    [(row,)] = conn.execute(f"UPDATE {table} SET {assignment} WHERE {where} RETURNING row_number").fetchall()
    return row


@pytest.mark.parametrize("assignment, column, requirement, value", [
    ("split = 'training'", "split", "is one of train, validation, test", "training"),
    ("split = NULL", "split", "is never null", None),
    ("file_sha256 = 'not-a-sha'", "file_sha256", "matches ^[0-9a-f]{64}$", "not-a-sha"),
    ("row_id = 'XYZ'", "row_id", "matches ^[0-9a-f]{16}$", "XYZ"),
    ("text = ''", "text", "has 1 to 100 characters", ""),
    ("text = repeat('x', 101)", "text", "has 1 to 100 characters", "x" * 101),
    ("label = 'refund'", "label", "is one of the dataset's labels", "refund"),
    ("label = NULL", "label", "is never null", None),
    ("source_uri = NULL", "source_uri", "is never null", None),
])
def test_a_broken_clean_row_fails_the_contract_naming_it(warehouse, uri, assignment, column, requirement, value):
    row = broken(warehouse, assignment)
    (failure,) = check(warehouse, "datasets.d", clean_rows_contract(DATASET))
    assert (failure.column, failure.rows) == (column, 1) and failure.requirement.startswith(requirement)
    assert failure.sample == [{"source_uri": None if column == "source_uri" else uri, "row_number": row, "value": value}]
    assert f"row {row}: {value!r}"[:60] in failure.line()  # a long value is cut short


def test_a_text_repeated_in_train_fails_naming_both_rows(warehouse, uri):
    [(text, other)] = warehouse.sql("""SELECT text, row_number FROM datasets."d" WHERE split = 'train'
                                       ORDER BY row_id DESC LIMIT 1""").fetchall()
    row = broken(warehouse, f"text = '{text}'")
    (failure,) = check(warehouse, "datasets.d", clean_rows_contract(DATASET))
    assert failure.column == "text" and "repeats" in failure.requirement and failure.rows == 2
    assert failure.sample == [{"source_uri": uri, "row_number": r, "value": text} for r in sorted([row, other])]


def test_a_repeated_row_id_fails_as_not_unique(warehouse):
    [(row_id,)] = warehouse.sql("""SELECT max(row_id) FROM datasets."d" """).fetchall()
    broken(warehouse, f"row_id = '{row_id}'")
    (failure,) = check(warehouse, "datasets.d", clean_rows_contract(DATASET))
    assert failure.column == "row_id" and failure.requirement == "identifies one row (unique)" and failure.rows == 2
    assert {s["value"] for s in failure.sample} == {row_id}


def test_a_causal_dataset_has_no_labels(warehouse):
    instruction = DATASET.model_copy(update={"task": "instruction", "labels": None})
    (failure,) = check(warehouse, "datasets.d", clean_rows_contract(instruction))
    assert failure.column == "label" and "instruction rows have no label" in failure.requirement
    assert failure.rows == 30 and len(failure.sample) == SAMPLE_ROWS


@pytest.mark.parametrize("change, expected", [
    ("ADD COLUMN extra VARCHAR", "column extra: is not a column of this table"),
    ("ALTER COLUMN row_number TYPE INTEGER", "column row_number: is a column of type BIGINT"),
    ("DROP COLUMN label", "column label: is a column of type VARCHAR"),
])
def test_the_columns_and_their_types_are_exactly_the_contracts(warehouse, change, expected):
    warehouse.execute(f'ALTER TABLE datasets."d" {change}')
    assert [f.line() for f in check(warehouse, "datasets.d", clean_rows_contract(DATASET))] == [expected]


@pytest.mark.parametrize("assignment, column, requirement", [
    ("file_sha256 = 'abc'", "file_sha256", "matches ^[0-9a-f]{64}$"),
    ("row_number = 0", "row_number", "is at least 1"),
    ("source_uri = NULL", "source_uri", "is never null"),
])
def test_a_broken_raw_row_fails_the_raw_contract_naming_it(warehouse, assignment, column, requirement):
    broken(warehouse, assignment, table='raw."c"', where="row_number = 7")
    (failure,) = check(warehouse, "raw.c", RAW_ROWS)
    assert (failure.column, failure.requirement, failure.rows) == (column, requirement, 1)
    assert failure.sample[0]["row_number"] == (0 if column == "row_number" else 7)


def test_a_raw_row_read_twice_fails_as_not_unique(warehouse):
    warehouse.execute('INSERT INTO raw."c" SELECT * FROM raw."c" WHERE row_number = 7')
    (failure,) = check(warehouse, "raw.c", RAW_ROWS)
    assert failure.column == "file_sha256, row_number" and failure.rows == 2
    assert [s["row_number"] for s in failure.sample] == [7, 7]


def test_the_check_metadata_lists_each_failure_with_its_rows(warehouse, uri):
    from ft_assets.defs.resources import contract_metadata

    row = broken(warehouse, "split = 'training'")
    metadata = contract_metadata(check(warehouse, "datasets.d", clean_rows_contract(DATASET)))
    assert metadata["problems"].value == (f"- column split: is one of train, validation, test: 1 row(s), "
                                          f"e.g. a.csv row {row}: 'training'")
    assert metadata["failures"].value == [{"column": "split", "requirement": "is one of train, validation, test",
                                           "rows": 1, "sample": [{"source_uri": uri, "row_number": row,
                                                                  "value": "training"}]}]
    assert contract_metadata([])["problems"].value == "none"
