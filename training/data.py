"""Datasets: named public datasets (downloaded once, sha256-checked), local files, and the
sine toy; the standard splits of ``shared/data/README.md``.

- Text (char models): nanoGPT's split, first 90% of characters train, last 10% validation,
  vocabulary from the whole file.
- Series (forecasters): ETT's 12/4/4 months (rows [0, 8640) train, [8640-L, 11520) val,
  [11520-L, 14400) test); other CSVs use 70/10/20 with the same L-row context; the z-score
  scaler is fitted on train rows only; windows are every stride-1 window of a split.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnops import contract, settings
from rnnops.errors import RnnopsError
from rnnops.util import sha256_file


@dataclass(frozen=True)
class NamedDataset:
    name: str
    filename: str
    url: str
    sha256: str
    kind: str  # "text" | "series" | "panel"


DATASETS: dict[str, NamedDataset] = {
    d.name: d
    for d in [
        NamedDataset(
            "tinyshakespeare",
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "text",
        ),
        NamedDataset(
            "etth1",
            "ETTh1.csv",
            "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv",
            "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
            "series",
        ),
        NamedDataset(
            "etth2",
            "ETTh2.csv",
            "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh2.csv",
            "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
            "series",
        ),
        # M4 Hourly's two halves (wide CSVs); training/m4.py reads them as the panel `m4-hourly`.
        NamedDataset(
            "m4-hourly-train",
            "m4/Hourly-train.csv",
            "https://raw.githubusercontent.com/Mcompetitions/M4-methods/master/Dataset/Train/Hourly-train.csv",
            "ea59b7783573c49077a835ab6465c7d66f1474783360f310988a9a737fbca62f",
            "panel",
        ),
        NamedDataset(
            "m4-hourly-test",
            "m4/Hourly-test.csv",
            "https://raw.githubusercontent.com/Mcompetitions/M4-methods/master/Dataset/Test/Hourly-test.csv",
            "71a57fccb15e534d973626ada4fb87febf789e9317715b7cc6dd3b5f90db6f42",
            "panel",
        ),
    ]
}

# ETT's 12/4/4 months of 30 days, in hourly rows.
ETT_BORDERS = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)


def fetch(name: str) -> Path:
    """Path to a named dataset: from ``RNNOPS_DATA_DIR``, else the cache, else downloaded."""
    if name not in DATASETS:
        raise RnnopsError(
            f"unknown dataset {name!r}: use one of {', '.join(sorted(DATASETS))}, or a path to a local file"
        )
    ds = DATASETS[name]
    local = settings.data_dir()
    if local is not None:
        path = local / ds.filename
        if not path.is_file():
            raise RnnopsError(f"RNNOPS_DATA_DIR={local} has no {ds.filename}; put it there or unset RNNOPS_DATA_DIR")
        _check_sha(path, ds)
        return path
    path = settings.cache_dir() / "data" / ds.filename
    if path.is_file():
        _check_sha(path, ds)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(ds.url, timeout=60) as resp:
                shutil.copyfileobj(resp, tmp)
        except (urllib.error.URLError, OSError) as exc:
            Path(tmp.name).unlink(missing_ok=True)
            raise RnnopsError(
                f"cannot download {name} from {ds.url} ({getattr(exc, 'reason', exc)}); "
                f"if offline, put {ds.filename} in a folder and set RNNOPS_DATA_DIR to it"
            ) from None
    _check_sha(Path(tmp.name), ds, downloaded=True)
    Path(tmp.name).replace(path)
    return path


def _check_sha(path: Path, ds: NamedDataset, downloaded: bool = False) -> None:
    digest = sha256_file(path)
    if digest != ds.sha256:
        if downloaded:
            path.unlink(missing_ok=True)
        raise RnnopsError(
            f"{path} has sha256 {digest[:12]}…, expected {ds.sha256[:12]}… for {ds.name}; "
            "the file is corrupted or a different version: delete it and fetch again"
        )


def resolve_source(source: str, kind: str) -> tuple[Path, str]:
    """(path, display name) for a dataset name or a local file path."""
    if source in DATASETS:
        if DATASETS[source].kind != kind:
            raise RnnopsError(f"dataset {source!r} is a {DATASETS[source].kind} dataset, not {kind}")
        return fetch(source), source
    path = Path(source).expanduser()
    if not path.is_file():
        raise RnnopsError(
            f"no dataset {source!r}: not a named dataset ({', '.join(sorted(DATASETS))}) and no such file"
        )
    return path, path.name


# ---------------------------------------------------------------- text


class CharVocab:
    """Characters <-> ids; the vocabulary is the sorted set of characters of the whole file."""

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise RnnopsError(f"characters not in the model's vocabulary: {''.join(unknown)!r}")
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


@dataclass
class TextData:
    name: str
    path: Path
    sha256: str
    vocab: CharVocab
    train: np.ndarray  # int64 ids
    val: np.ndarray


def load_text(source: str, min_chars: int = 2) -> TextData:
    """Load a text dataset and split it 90/10 (nanoGPT's split)."""
    path, name = resolve_source(source, "text")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RnnopsError(
            f"{path} is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); convert it to UTF-8"
        ) from None
    if not text:
        raise RnnopsError(f"{path} is empty")
    if len(text) < min_chars:
        raise RnnopsError(f"{path} has {len(text)} characters, fewer than one training window needs ({min_chars})")
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    n = int(0.9 * len(ids))
    return TextData(name, path, sha256_file(path), vocab, ids[:n], ids[n:])


# ---------------------------------------------------------------- series


@dataclass
class SeriesData:
    name: str
    path: Path | None
    sha256: str
    dates: np.ndarray | None  # datetime64 per row, when the data has dates
    values: np.ndarray  # float32 [N, F], raw units
    feature_names: list[str]
    target_names: list[str]
    borders: tuple[int, int, int]  # end of train, end of val, end of test (rows)
    date_column: str | None = None  # the column the dates came from (given or detected)

    @property
    def target_indices(self) -> list[int]:
        return [self.feature_names.index(t) for t in self.target_names]

    def split_range(self, split: str, lookback: int) -> tuple[int, int]:
        """Row range [a, b) of a split; val/test start ``lookback`` rows early for context."""
        tr, va, te = self.borders
        return {"train": (0, tr), "val": (tr - lookback, va), "test": (va - lookback, te)}[split]

    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """Z-score mean and std over the training rows (population std, as sklearn's)."""
        train = self.values[: self.borders[0]].astype(np.float64)
        mean, std = train.mean(0), train.std(0)
        std[std < 1e-8] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    def window_starts(self, split: str, lookback: int, horizon: int) -> np.ndarray:
        a, b = self.split_range(split, lookback)
        n = b - a - lookback - horizon + 1
        if n <= 0:
            raise RnnopsError(
                f"the {split} split of {self.name} has {b - a} rows, too few for lookback "
                f"{lookback} + horizon {horizon}; use a shorter lookback or horizon"
            )
        return np.arange(a, a + n)


def load_series(
    source: str,
    features: str = "M",
    target: str | None = None,
    date_column: str | None = None,
    fill: str | None = None,
) -> SeriesData:
    """Load a CSV (named ETT dataset, any local CSV) or the generated ``sine`` toy.

    ``features``: ``M`` (every numeric column in and out) or ``S`` (the target column only).
    ``fill``: ``ffill`` fills NaNs forward (then backward); without it NaNs are an error.
    """
    if features not in ("M", "S"):
        raise RnnopsError(f"--features must be M or S, not {features!r}")
    if source == "sine":
        return make_sine()
    import pandas as pd

    path, name = resolve_source(source, "series")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for unreadable CSVs
        raise RnnopsError(f"cannot read {path} as CSV: {exc}") from None
    date_col = _find_date_column(df, date_column)
    dates = None
    if date_col is not None:
        parsed = pd.to_datetime(df[date_col], errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            raise RnnopsError(f"{path}: column {date_col!r} has unparsable dates at rows {_rows(bad)}")
        dates = parsed.to_numpy()
    numeric = [c for c in df.columns if c != date_col and pd.api.types.is_numeric_dtype(df[c])]
    if not numeric:
        raise RnnopsError(f"{path} has no numeric columns to forecast (columns: {', '.join(map(str, df.columns))})")
    if target is None:
        target = "OT" if "OT" in numeric else numeric[-1]
    if target not in numeric:
        raise RnnopsError(f"target column {target!r} is not a numeric column of {path} ({', '.join(numeric)})")
    cols = numeric if features == "M" else [target]
    # Column names travel into the model's metadata. Any printable name is kept as it is (HTML
    # and quotes included: the data is the user's own, batch jobs match columns by name, and
    # every reader shows names as text); one serving would refuse is refused now, not at load.
    try:
        contract.check_names(f"{path}: column names", [str(c) for c in cols])
    except contract.MetadataError as exc:
        raise RnnopsError(f"{exc}; rename the column") from None
    frame = df[cols]
    if frame.isna().any().any():
        if fill == "ffill":
            frame = frame.ffill().bfill()
        else:
            where = {c: _rows(np.flatnonzero(frame[c].isna().to_numpy())) for c in cols if frame[c].isna().any()}
            detail = "; ".join(f"{c} at rows {r}" for c, r in where.items())
            raise RnnopsError(f"{path} has missing values: {detail}; clean them or pass --fill ffill")
    values = frame.to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise RnnopsError(f"{path} has infinite values; clean them first")
    n = len(values)
    if name.lower().startswith("etth") and n >= ETT_BORDERS[2]:
        borders = ETT_BORDERS
    else:
        borders = (int(n * 0.7), int(n * 0.8), n)
    sha = sha256_file(path)
    targets = [target] if features == "S" else list(cols)
    return SeriesData(
        Path(path).stem if source not in DATASETS else source,
        path,
        sha,
        dates,
        values,
        list(cols),
        targets,
        borders,
        date_col,
    )


def _rows(idx: np.ndarray, most: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:most])
    return shown + (f" (and {len(idx) - most} more)" if len(idx) > most else "")


def _find_date_column(df, name: str | None):
    import pandas as pd

    if name is not None:
        if name not in df.columns:
            raise RnnopsError(f"date column {name!r} not found (columns: {', '.join(map(str, df.columns))})")
        return name
    for col in df.columns:
        if str(col).lower() in ("date", "datetime", "timestamp", "time", "ds"):
            return col
    first = df.columns[0]
    if not pd.api.types.is_numeric_dtype(df[first]):
        parsed = pd.to_datetime(df[first].head(20), errors="coerce")
        if parsed.notna().all():
            return first
    return None


def make_sine(n: int = 4000, period: float = 50.0, noise: float = 0.05, seed: int = 0) -> SeriesData:
    """The classic toy: one noisy sine wave (hourly timestamps), split 70/10/20."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    values = (np.sin(2 * math.pi * t / period) + noise * rng.standard_normal(n)).astype(np.float32)[:, None]
    dates = np.datetime64("2024-01-01T00:00") + np.arange(n).astype("timedelta64[h]")
    sha = hashlib.sha256(values.tobytes()).hexdigest()
    return SeriesData("sine", None, sha, dates, values, ["sine"], ["sine"], (int(n * 0.7), int(n * 0.8), n))
