"""Adduct tables: built-in positive and negative adducts, user tables, priors and ion m/z."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pandas as pd

from dask_assign.chemistry.formulas import ELECTRON_MASS, ParsedFormula, contains, parse_formula
from dask_assign.errors import InputError, unreadable

#: Shifts (Da) of the decoy maps: mass differences no common adduct, loss or isotope makes.
#: How often a decoy finds a co-eluting peak measures the chance of a partner by accident.
DECOY_SHIFTS = (3.0, -3.0, 5.0, -5.0, 7.0, -7.0)

ADDUCT_COLUMNS = ("name", "mode", "mult", "add", "sub", "charge", "prior")


@dataclass(frozen=True)
class Adduct:
    """One adduct: how a neutral molecule M becomes an ion.

    Attributes
    ----------
    name : str
        Notation such as ``[M+Na]+``.
    mult : int
        Molecules per ion (2 for ``[2M+H]+``).
    add, sub : str
        Formulas added and removed ("" for none).
    charge : int
        Signed charge of the ion.
    prior : float
        Relative chance that a compound shows this ion.
    """

    name: str
    mult: int
    add: str
    sub: str
    charge: int
    prior: float

    @property
    def delta_mass(self) -> float:
        """Mass added to ``mult * M`` (electrons included), before division by ``|charge|``."""
        added = parse_formula(self.add).mass if self.add else 0.0
        removed = parse_formula(self.sub).mass if self.sub else 0.0
        return added - removed - self.charge * ELECTRON_MASS

    @property
    def elements(self) -> dict:
        """Atoms the adduct adds (positive) or removes (negative), by element.

        >>> builtin_adducts("negative")["[M+FA-H]-"].elements
        {'C': 1, 'H': 1, 'O': 2}
        """
        out: dict = {}
        for text, sign in ((self.add, 1), (self.sub, -1)):
            if text:
                for el, k in parse_formula(text).elements.items():
                    out[el] = out.get(el, 0) + sign * k
        return {el: k for el, k in out.items() if k}

    def mz(self, neutral_mass):
        """m/z of this ion of a molecule of monoisotopic mass ``neutral_mass`` (scalar or array).

        >>> round(builtin_adducts("positive")["[M+Na]+"].mz(180.06338810418), 4)  # glucose
        203.0526
        """
        return (self.mult * neutral_mass + self.delta_mass) / abs(self.charge)

    def feasible(self, formula: ParsedFormula | None) -> bool:
        """Whether a compound can form this ion: it must hold the atoms the adduct removes.

        Compounds known only by mass (no formula) are assumed able to.
        """
        if formula is None or not self.sub:
            return True
        return contains(formula, parse_formula(self.sub), times=self.mult)


#: Abbreviations adduct names use for added molecules (as the field writes them).
NAME_ABBREVIATIONS = {"FA": "CH2O2", "Hac": "C2H4O2", "HAc": "C2H4O2", "ACN": "C2H3N",
                      "IsoProp": "C3H8O", "DMSO": "C2H6OS", "TFA": "C2HF3O2", "MeOH": "CH4O"}


def parse_adduct_name(name: str) -> tuple:
    """What an adduct name says: ``(mult, charge, atoms)`` with ``atoms`` the elements added
    (positive) or removed (negative), so names written differently compare equal.

    Examples
    --------
    >>> parse_adduct_name("[M-NH3+H]+") == parse_adduct_name("[M+H-NH3]+")
    True
    >>> parse_adduct_name("[M+CH2O2-H]-") == parse_adduct_name("[M+FA-H]-")
    True
    >>> parse_adduct_name("M-H")  # without brackets, no charge is written
    (1, 0, (('H', -1),))
    >>> parse_adduct_name("[2M+Na-2H]-")
    (2, -1, (('H', -2), ('Na', 1)))
    """
    import re

    text = str(name).strip()
    charge = 0
    m = re.fullmatch(r"\[(.+)\](\d*)([+-])", text)
    if m:
        text, charge = m.group(1), (int(m.group(2) or 1)) * (1 if m.group(3) == "+" else -1)
    head = re.match(r"(\d*)M", text)
    if not head:
        raise ValueError(f"not an adduct name: {name!r}")
    mult = int(head.group(1) or 1)
    atoms: dict = {}
    for sign, count, part in re.findall(r"([+-])(\d*)([A-Za-z][A-Za-z0-9]*)", text[head.end():]):
        formula = NAME_ABBREVIATIONS.get(part, part)
        k = int(count or 1) * (1 if sign == "+" else -1)
        for el, n in parse_formula(formula).elements.items():
            atoms[el] = atoms.get(el, 0) + k * n
    return mult, charge, tuple(sorted((el, k) for el, k in atoms.items() if k))


def _table_to_adducts(table: pd.DataFrame, source: str) -> dict[str, Adduct]:
    missing = [c for c in ADDUCT_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(source, f"missing columns {missing}; an adduct table needs "
                         f"{list(ADDUCT_COLUMNS)}")
    out: dict[str, Adduct] = {}
    for i, row in enumerate(table.itertuples(index=False), start=1):
        name = str(row.name).strip()
        if name in out:
            raise InputError(source, "duplicate adduct name", column="name", rows=[i],
                             values=[name])
        for col in ("add", "sub"):
            text = "" if pd.isna(getattr(row, col)) else str(getattr(row, col)).strip()
            if text not in ("", "-"):
                try:
                    parse_formula(text)
                except ValueError as err:
                    raise InputError(source, str(err), column=col, rows=[i],
                                     values=[text]) from None
        try:
            mult, charge, prior = int(row.mult), int(row.charge), float(row.prior)
        except (TypeError, ValueError):
            raise InputError(source, "mult, charge and prior must be numbers", rows=[i]) from None
        if mult < 1 or charge == 0 or not prior > 0:
            raise InputError(source, "need mult >= 1, charge != 0 and prior > 0", rows=[i],
                             values=[name])
        clean = [("" if pd.isna(v) or str(v).strip() == "-" else str(v).strip())
                 for v in (row.add, row.sub)]
        out[name] = Adduct(name, mult, clean[0], clean[1], charge, prior)
    return out


def read_adduct_table(path) -> pd.DataFrame:
    """An adduct table as text (``#`` lines are comments): CSV by its suffix, else TSV."""
    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        return pd.read_csv(path, sep=sep, comment="#", dtype=str)
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    except pd.errors.EmptyDataError:
        raise InputError(str(path), "the file is empty") from None
    except (OSError, EOFError) as err:  # a folder, a damaged compressed file
        raise unreadable(path, err) from None


def builtin_adducts(mode: str) -> dict[str, Adduct]:
    """All built-in adducts of one ionisation mode, by name.

    Parameters
    ----------
    mode : {"positive", "negative"}

    Examples
    --------
    >>> len(builtin_adducts("positive")) >= 30 and "[M+H]+" in builtin_adducts("positive")
    True
    """
    table = read_adduct_table(files("dask_assign") / "data" / "adducts.tsv")
    table = table[table["mode"] == mode]
    return _table_to_adducts(table, "built-in adduct table")


def default_adduct_names(mode: str) -> tuple[str, ...]:
    """Names of the adducts searched by default in ``mode``."""
    table = read_adduct_table(files("dask_assign") / "data" / "adducts.tsv")
    return tuple(table.loc[(table["mode"] == mode) & (table["default"] == "1"), "name"])


def read_adducts(path, mode: str | None = None) -> dict[str, Adduct]:
    """Read a user adduct table (TSV or CSV with the built-in table's columns).

    Parameters
    ----------
    path : str or Path
    mode : {"positive", "negative"}, optional
        Keep only rows of this mode when the table has a ``mode`` column.
    """
    table = read_adduct_table(path)
    if mode is not None and "mode" in table.columns:
        table = table[table["mode"] == mode]
    adducts = _table_to_adducts(table, str(path))
    if not adducts:
        raise InputError(str(path), f"no adducts for mode {mode!r}")
    return adducts


def select_adducts(
    mode: str, names=None, table_path=None
) -> tuple[Adduct, ...]:
    """The adducts a run searches.

    Parameters
    ----------
    mode : {"positive", "negative"}
    names : sequence of str, optional
        Adduct names; ``None`` takes the defaults of the table (built-in: its ``default`` column).
    table_path : str, optional
        A user adduct table replacing the built-in one.

    Raises
    ------
    InputError
        For an adduct name that the table does not know, or of the wrong polarity.
    """
    if table_path is not None:
        available = read_adducts(table_path, mode)
        source = str(table_path)
        default = tuple(available)
    else:
        available = builtin_adducts(mode)
        source = "--adducts"
        default = default_adduct_names(mode)
    chosen = default if names is None else tuple(n.strip() for n in names if n.strip())
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise InputError(
            source,
            f"unknown adduct(s) {unknown} for {mode} mode; known: {', '.join(available)}",
        )
    wrong = [n for n in chosen if (available[n].charge > 0) != (mode == "positive")]
    if wrong:
        raise InputError(source, f"adduct(s) {wrong} do not have {mode} charge")
    if not chosen:
        raise InputError(source, "no adducts selected")
    return tuple(available[n] for n in chosen)
