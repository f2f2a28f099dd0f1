"""Recipe filters: named keep-rules over score columns, dedup removals, optional top-k per source.

Every pair ends kept, or dropped with every reason that applies; the funnel counts, step by step, the pairs that
came in, were dropped there first, and went out.
"""

from __future__ import annotations

import json
import re

import duckdb
import polars as pl

from curation.calibration import threshold_for
from schemas.errors import RecipeError, first_line
from schemas.recipe import FilterConfig, PrecisionTarget, RuleConfig, TopKConfig
from schemas.tables import SCORE_COLUMN_OWNER, SCORES

DEDUP_STEPS = {
    "exact-source": "paraphrase equals its source (normalised)",
    "exact": "same paraphrase as a kept pair of another source",
    "semantic-source": "near-duplicate of a kept paraphrase of the same source (cosine)",
    "semantic-corpus": "near-duplicate of a kept paraphrase of another source (cosine)",
    "nli-graph": "entails / is entailed by a better pair of the same source (NLI graph)",
}


_EXPR_HELP = ("a filter expression uses only score columns, constants, operators and scalar functions, "
              "e.g. 'wpd + ld > 0.3'")
# Words that open a query or name a table: Polars SQL runs a subquery (and its read_csv/read_parquet table
# functions) while it *parses* an expression, so these are refused on the text before anything parses it.
_QUERY_WORDS = re.compile(r"\b(select|from|values|with|table|(?:read|scan)_\w+)\b", re.IGNORECASE)
_DISTINCT_FROM = re.compile(r"\bis\s+(?:not\s+)?distinct\s+from\b", re.IGNORECASE)


def _refuse(what: str, text: str, found: str) -> RecipeError:
    return RecipeError(f"{what}: {text!r} contains {found}, which is not allowed; {_EXPR_HELP}")


def _walk_ast(node: object, what: str, text: str) -> None:
    """Refuse subqueries, FROM clauses and table functions anywhere in a DuckDB-serialised parse tree."""
    if isinstance(node, list):
        for item in node:
            _walk_ast(item, what, text)
        return
    if not isinstance(node, dict):
        return
    if node.get("class") == "SUBQUERY":
        raise _refuse(what, text, "a subquery")
    if node.get("type") in ("TABLE_FUNCTION", "BASE_TABLE", "JOIN", "SUBQUERY"):
        raise _refuse(what, text, "a table reference")
    name = node.get("function_name")
    if isinstance(name, str) and name.lower().startswith(("read_", "scan_")):
        raise _refuse(what, text, f"the table function {name}()")
    for value in node.values():
        _walk_ast(value, what, text)


def check_expression(text: str, what: str) -> None:
    """Refuse, before any SQL engine evaluates it, an `expr`/`by` that is not one expression over columns.

    Two independent checks, both parse-only: the words that open a query or name a table (SELECT, FROM,
    VALUES, WITH, TABLE, read_*/scan_*), then DuckDB's parser (`json_serialize_sql` parses, never binds or
    runs) for one SELECT of one expression with no FROM, WHERE, GROUP BY, subquery or table function.
    """
    m = _QUERY_WORDS.search(_DISTINCT_FROM.sub(" ", text))
    if m:
        word = m.group(1)
        found = (f"the table function {word}()" if word.lower().startswith(("read_", "scan_"))
                 else f"{word.upper()} (a subquery or table reference)")
        raise _refuse(what, text, found)
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", ["SELECT " + text]).fetchone()[0])
    finally:
        con.close()
    if tree.get("error"):
        return  # not DuckDB syntax (a Polars-only form): the word check above stands, Polars reports the rest
    statements = tree.get("statements") or []
    if len(statements) != 1:
        raise _refuse(what, text, "more than one statement")
    node = statements[0].get("node", {})
    if node.get("type") != "SELECT_NODE" or len(node.get("select_list") or []) != 1:
        raise _refuse(what, text, "more than one expression")
    if (node.get("from_table") or {}).get("type", "EMPTY") != "EMPTY":
        raise _refuse(what, text, "a FROM clause")
    for clause in ("where_clause", "having", "qualify", "sample"):
        if node.get(clause):
            raise _refuse(what, text, f"a {clause.removesuffix('_clause').upper()} clause")
    if node.get("group_expressions") or node.get("modifiers") or (node.get("cte_map") or {}).get("map"):
        raise _refuse(what, text, "a query clause")
    _walk_ast(node.get("select_list"), what, text)


def _sql(text: str, what: str) -> pl.Expr:
    check_expression(text, what)
    try:
        return pl.sql_expr(text)
    except Exception as e:  # polars raises several error types for bad SQL
        raise RecipeError(f"{what}: cannot parse SQL expression {text!r} ({first_line(e)})") from None


def resolve_targets(cfg: FilterConfig, calibration: dict | None) -> tuple[FilterConfig, dict[str, dict]]:
    """The filter with each `min: {precision: p}` replaced by the threshold that reached p in the calibration's
    cross-validation, and per such rule what was chosen (threshold, precision, recall, target)."""
    chosen: dict[str, dict] = {}
    rules = []
    for rule in cfg.rules:
        if isinstance(rule.min, PrecisionTarget):
            if calibration is None:
                raise RecipeError(f"filter rule {rule.name!r}: min: {{precision: ...}} needs the quality scorer "
                                  "(add quality to score.scorers and label some pairs)")
            try:
                chosen[rule.name] = {**threshold_for(calibration, rule.min.precision),
                                     "calibration": calibration.get("version")}
            except RecipeError as e:
                raise RecipeError(f"filter rule {rule.name!r}: {e}") from None
            rule = rule.model_copy(update={"min": chosen[rule.name]["threshold"]})
        rules.append(rule)
    return cfg.model_copy(update={"rules": rules}), chosen


def rule_expr(rule: RuleConfig) -> pl.Expr:
    """True where the pair passes; a missing value (null) fails. A precision target must be resolved first
    (`resolve_targets`)."""
    if isinstance(rule.min, PrecisionTarget):
        return pl.col(rule.column).is_not_null()  # the column check only; decide() gets resolved rules
    if rule.expr is not None:
        return _sql(rule.expr, f"filter rule {rule.name!r}").fill_null(False)
    col = pl.col(rule.column)
    cond = pl.lit(True)
    if rule.min is not None:
        cond = cond & (col >= rule.min)
    if rule.max is not None:
        cond = cond & (col <= rule.max)
    if rule.equals is not None:
        cond = cond & (col == rule.equals)
    return cond.fill_null(False)


def describe(rule: RuleConfig) -> str:
    if rule.expr is not None:
        return rule.expr
    parts = []
    if isinstance(rule.min, PrecisionTarget):
        parts.append(f"{rule.column} >= the threshold of precision {rule.min.precision:g}")
    elif rule.min is not None:
        parts.append(f"{rule.column} >= {rule.min:g}")
    if rule.max is not None:
        parts.append(f"{rule.column} <= {rule.max:g}")
    if rule.equals is not None:
        parts.append(f"{rule.column} = {str(rule.equals).lower()}")
    return " and ".join(parts)


def _columns_of(expr: pl.Expr) -> list[str]:
    return expr.meta.root_names()


def validate(cfg: FilterConfig, available: set[str]) -> None:
    """A rule or top-k objective naming an unknown column, or one whose scorer did not run: one RecipeError line."""
    checks = [(f"filter rule {r.name!r}", rule_expr(r)) for r in cfg.rules]
    if cfg.top_k:
        checks.append(("filter.top_k.by", _sql(cfg.top_k.by, "filter.top_k.by")))
    for what, expr in checks:
        for col in _columns_of(expr):
            if col in available:
                continue
            owner = SCORE_COLUMN_OWNER.get(col)
            if owner is None:
                known = ", ".join(sorted(available))
                raise RecipeError(f"{what}: unknown column {col!r}; score columns are: {known}")
            how = ("set nli.model to an NLI model path or Hub id" if owner == "nli"
                   else f"add {owner!r} to score.scorers")
            raise RecipeError(f"{what}: column {col!r} comes from the {owner!r} scorer, which is not run; {how} "
                              "or drop the rule")
    _dry_run(cfg)


def _dry_run(cfg: FilterConfig) -> None:
    """Evaluate every expression on an empty frame of the score columns' types: a type mistake (a string compared
    with a number, a text function on a score) or a rule that is not true/false fails here, before models load."""
    empty = pl.DataFrame(schema=SCORES)
    checks = [(f"filter rule {r.name!r}", r.expr, rule_expr(r), True) for r in cfg.rules if r.expr is not None]
    if cfg.top_k:
        checks.append(("filter.top_k.by", cfg.top_k.by, _sql(cfg.top_k.by, "filter.top_k.by"), False))
    for what, text, expr, boolean in checks:
        try:
            dtype = empty.select(expr.alias("_r")).schema["_r"]
        except Exception as e:  # polars raises several error types for a mistyped expression
            raise RecipeError(f"{what}: cannot evaluate {text!r} over the score columns ({first_line(e)})") from None
        if boolean and dtype != pl.Boolean:
            raise RecipeError(f"{what}: {text!r} gives {dtype}, not true/false; compare it, e.g. '{text} > 0.5'")


def _top_k_keep(df: pl.DataFrame, top_k: TopKConfig, eligible: pl.Expr) -> pl.Series:
    """False only for eligible pairs outside the best k of their source (top-k is no reason to drop the others)."""
    score = _sql(top_k.by, "filter.top_k.by")
    ranked = (df.with_row_index("_i").filter(eligible)
              .with_columns(_score=score)
              .sort(["_score", "pair_id"], descending=[top_k.descending, False], nulls_last=True)
              .with_columns(_rank=pl.int_range(pl.len()).over("source_id"))
              .filter(pl.col("_rank") < top_k.k))
    keep = df.select(~eligible).to_series().fill_null(True)
    return keep.scatter(ranked.get_column("_i").to_list(), True) if ranked.height else keep


def decide(scored: pl.DataFrame, removed: pl.DataFrame, cfg: FilterConfig,
           dedup_methods: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decisions (pair_id, source_id, kept, reasons) and funnel (step, rule, description, pairs_in, dropped, pairs_out).

    `scored`: one row per unique pair with its score columns; `removed`: dedup links (pair_id, method);
    `dedup_methods`: the dedup steps that ran (funnel rows even when they removed nothing; default: those seen).
    """
    steps: list[tuple[str, str, pl.Expr]] = []  # (name, description, passes)
    method = scored.select("pair_id").join(removed.select("pair_id", "method"), on="pair_id", how="left")["method"]
    df = scored.with_columns(_dedup=method)
    for m, text in DEDUP_STEPS.items():
        if (m in dedup_methods) if dedup_methods is not None else (df["_dedup"] == m).any():
            steps.append((f"dedup:{m}", text, pl.col("_dedup").fill_null("") != m))
    for rule in cfg.rules:
        steps.append((rule.name, describe(rule), rule_expr(rule)))
    passes = df.select([e.alias(f"_p{i}") for i, (_, _, e) in enumerate(steps)]) if steps else pl.DataFrame()
    df = pl.concat([df, passes], how="horizontal")
    flags = [f"_p{i}" for i in range(len(steps))]
    if cfg.top_k:
        eligible = pl.all_horizontal(flags) if flags else pl.lit(True)
        df = df.with_columns(_top=_top_k_keep(df, cfg.top_k, eligible))
        order = "desc" if cfg.top_k.descending else "asc"
        steps.append(("top-k", f"best {cfg.top_k.k} per source by {cfg.top_k.by} ({order})", pl.col("_top")))
        flags.append("_top")
    reasons = pl.concat_list([pl.when(~pl.col(f)).then(pl.lit(name)).otherwise(None)
                              for f, (name, _, _) in zip(flags, steps, strict=True)]).list.drop_nulls() \
        if flags else pl.lit([], dtype=pl.List(pl.String))
    decisions = df.select("pair_id", "source_id", reasons.alias("reasons")).with_columns(
        kept=pl.col("reasons").list.len() == 0)
    funnel, alive = [], pl.Series(df.height * [True])
    for i, (f, (name, text, _)) in enumerate(zip(flags, steps, strict=True)):
        fails = alive & ~df[f]
        n_in = int(alive.sum())
        alive = alive & df[f]
        funnel.append((i + 1, name, text, n_in, int(fails.sum()), int(alive.sum())))
    funnel_df = pl.DataFrame(funnel, schema={"step": pl.Int64, "rule": pl.String, "description": pl.String,
                                             "pairs_in": pl.Int64, "dropped": pl.Int64, "pairs_out": pl.Int64},
                             orient="row")
    return decisions.select("pair_id", "source_id", "kept", "reasons"), funnel_df
