"""pandera contracts for the raw and clean tables: what every downstream step may rely on."""

from __future__ import annotations

import copy

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

from ft_assets.lib.config import DatasetConfig

SHA256 = r"^[0-9a-f]{64}$"


class RawRows(pa.DataFrameModel):
    source_uri: Series[str] = pa.Field(nullable=False)
    file_sha256: Series[str] = pa.Field(str_matches=SHA256)
    row_number: Series[int] = pa.Field(ge=1)
    text: Series[str] = pa.Field(nullable=True)
    label: Series[str] = pa.Field(nullable=True)

    class Config:
        strict = True
        unique = ["file_sha256", "row_number"]


class CleanRows(pa.DataFrameModel):
    row_id: Series[str] = pa.Field(unique=True, str_matches=r"^[0-9a-f]{16}$")
    split: Series[str] = pa.Field(isin=["train", "validation", "test"])
    text: Series[str] = pa.Field(str_length={"min_value": 1})
    label: Series[str] = pa.Field(nullable=False)
    source_uri: Series[str] = pa.Field(nullable=False)
    file_sha256: Series[str] = pa.Field(str_matches=SHA256)
    row_number: Series[int] = pa.Field(ge=1)

    class Config:
        strict = True

    @pa.dataframe_check(error="a train/validation text repeats, or also appears in the test split")
    def no_repeated_text(cls, frame: pd.DataFrame) -> pd.Series:
        learn = frame["split"] != "test"
        repeated = frame["text"].where(learn).duplicated(keep=False) & learn
        leaked = learn & frame["text"].isin(set(frame.loc[~learn, "text"]))
        return ~(repeated | leaked)


def clean_rows_schema(dataset: DatasetConfig) -> pa.DataFrameSchema:
    """CleanRows plus the dataset's own rules: its label set, its length limit, no repeated text.

    A fixed test corpus may repeat its own texts (it is kept as published), but no test text
    may also appear in train or validation. Causal-LM tasks have no label (it must be null);
    language modelling keeps repeated lines, so it drops the no-repeat rule.
    """
    if dataset.task == "classification":
        label = {"checks": [pa.Check.isin(dataset.labels)] if dataset.labels is not None else []}
    else:
        label = {"nullable": True, "checks": [pa.Check(lambda s: s.isna(), element_wise=False,
                                                        error=f"{dataset.task} rows have no label")]}
    schema = CleanRows.to_schema().update_columns({
        "text": {"checks": [pa.Check.str_length(min_value=1, max_value=dataset.max_chars)]},
        "label": label,
    })
    if dataset.task == "language_modeling":
        schema = copy.deepcopy(schema)
        schema.checks = []
    return schema


def validate(schema: pa.DataFrameSchema | type[pa.DataFrameModel], frame: pd.DataFrame) -> list[str]:
    """Every contract failure as one readable line each; an empty list means the frame passes."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as e:
        cases = e.failure_cases
        return [
            f"column {row.column}: {row.check} failed"
            + (f" at index {row.index}" if pd.notna(row.index) else "")
            + (f" (value {row.failure_case!r})" if pd.notna(row.failure_case) else "")
            for row in cases.head(50).itertuples()
        ]
    return []
