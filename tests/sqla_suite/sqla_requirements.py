"""What SQLite can do, for SQLAlchemy's dialect compliance suite.

``SuiteRequirements`` leaves most features closed; this opens the ones SQLite (3.35+, through
a ``sqlite3``-like driver, on a file database) has. Both drivers run with this same class, so
a difference between their results is a difference between the drivers, not the requirements.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.requirements import SuiteRequirements

Rule = Any  # exclusions.compound; SQLAlchemy's testing package is untyped


def _sqlite_at_least(*version: int) -> Rule:
    return exclusions.only_if(
        lambda config: config.db.dialect.dbapi.sqlite_version_info >= version,
        f"SQLite >= {'.'.join(map(str, version))} required",
    )


def _file_db(config: Any) -> bool:
    return bool(config.db.dialect._is_url_file_db(config.db.url))


class Requirements(SuiteRequirements):  # type: ignore[misc]
    """SQLite's capabilities, modelled on SQLAlchemy's own requirements for sqlite."""

    # --- DDL ---------------------------------------------------------------------------

    @property
    def create_table_as(self) -> Rule:
        return exclusions.open()

    @property
    def table_ddl_if_exists(self) -> Rule:
        return exclusions.open()

    @property
    def index_ddl_if_exists(self) -> Rule:
        return exclusions.open()

    @property
    def temporary_tables(self) -> Rule:
        # a TEMP table lives in one connection; the pool of a file database hands out others
        return exclusions.skip_if(_file_db, "temp tables are per connection on a file db")

    @property
    def create_temp_table_as(self) -> Rule:
        return self.temporary_tables

    @property
    def temp_table_reflection(self) -> Rule:
        return self.temporary_tables

    @property
    def temp_table_names(self) -> Rule:
        return self.temporary_tables

    @property
    def has_temp_table(self) -> Rule:
        return self.temporary_tables

    @property
    def temporary_views(self) -> Rule:
        return self.temporary_tables

    @property
    def views(self) -> Rule:
        return exclusions.open()

    @property
    def computed_columns(self) -> Rule:
        return _sqlite_at_least(3, 31)

    @property
    def computed_columns_stored(self) -> Rule:
        return self.computed_columns

    @property
    def computed_columns_virtual(self) -> Rule:
        return self.computed_columns

    @property
    def server_defaults(self) -> Rule:
        return exclusions.open()

    @property
    def expression_server_defaults(self) -> Rule:
        return exclusions.open()

    @property
    def unicode_ddl(self) -> Rule:
        return exclusions.open()

    @property
    def implicitly_named_constraints(self) -> Rule:
        return exclusions.closed()  # SQLite gives unnamed constraints no name

    @property
    def deferrable_fks(self) -> Rule:
        return exclusions.closed()  # SQLite accepts DEFERRABLE but does not enforce FKs by default

    # --- reflection --------------------------------------------------------------------

    @property
    def reflects_pk_names(self) -> Rule:
        return exclusions.open()

    @property
    def reflect_table_options(self) -> Rule:
        return exclusions.open()  # WITHOUT ROWID, STRICT

    @property
    def foreign_key_constraint_option_reflection_ondelete(self) -> Rule:
        return exclusions.open()

    @property
    def fk_constraint_option_reflection_ondelete_restrict(self) -> Rule:
        return exclusions.open()

    @property
    def fk_constraint_option_reflection_ondelete_noaction(self) -> Rule:
        return exclusions.open()

    @property
    def foreign_key_constraint_option_reflection_onupdate(self) -> Rule:
        return exclusions.open()

    @property
    def fk_constraint_option_reflection_onupdate_restrict(self) -> Rule:
        return exclusions.open()

    @property
    def check_constraint_reflection(self) -> Rule:
        return exclusions.open()

    @property
    def inline_check_constraint_reflection(self) -> Rule:
        return exclusions.open()

    @property
    def indexes_with_expressions(self) -> Rule:
        return exclusions.open()

    @property
    def reflect_indexes_with_expressions(self) -> Rule:
        return exclusions.closed()  # SQLite reports expression columns as None, no text

    @property
    def indexes_check_column_order(self) -> Rule:
        return exclusions.open()

    @property
    def computed_columns_reflect_persisted(self) -> Rule:
        return self.computed_columns

    # --- queries -----------------------------------------------------------------------

    @property
    def boolean_col_expressions(self) -> Rule:
        return exclusions.open()

    @property
    def nullsordering(self) -> Rule:
        return _sqlite_at_least(3, 30)

    @property
    def intersect(self) -> Rule:
        return exclusions.open()

    @property
    def except_(self) -> Rule:
        return exclusions.open()

    @property
    def parens_in_union_contained_select_w_limit_offset(self) -> Rule:
        return exclusions.fails_if("sqlite", "SQLite rejects parenthesized SELECTs in a UNION")

    @property
    def parens_in_union_contained_select_wo_limit_offset(self) -> Rule:
        return exclusions.fails_if("sqlite", "SQLite rejects parenthesized SELECTs in a UNION")

    @property
    def window_functions(self) -> Rule:
        return _sqlite_at_least(3, 25)

    @property
    def window_range(self) -> Rule:
        return _sqlite_at_least(3, 28)

    @property
    def window_range_numeric(self) -> Rule:
        return self.window_range

    @property
    def ctes(self) -> Rule:
        return exclusions.open()

    @property
    def ctes_with_update_delete(self) -> Rule:
        return exclusions.open()

    @property
    def ctes_with_values(self) -> Rule:
        return exclusions.open()

    @property
    def tuple_in(self) -> Rule:
        return _sqlite_at_least(3, 15)

    @property
    def mod_operator_as_percent_sign(self) -> Rule:
        return exclusions.open()

    @property
    def order_by_label_with_expression(self) -> Rule:
        return exclusions.open()

    @property
    def regexp_match(self) -> Rule:
        return exclusions.open()  # the dialect registers a Python regexp() function

    @property
    def regexp_replace(self) -> Rule:
        return exclusions.closed()  # SQLite has no regexp_replace()

    @property
    def update_from(self) -> Rule:
        return _sqlite_at_least(3, 33)

    @property
    def supports_bitwise_or(self) -> Rule:
        return exclusions.open()

    @property
    def supports_bitwise_and(self) -> Rule:
        return exclusions.open()

    @property
    def supports_bitwise_not(self) -> Rule:
        return exclusions.open()

    @property
    def supports_bitwise_shift(self) -> Rule:
        return exclusions.open()

    # --- DML and the driver ------------------------------------------------------------

    @property
    def independent_connections(self) -> Rule:
        # as SQLAlchemy's own requirements say for sqlite: tests would build extra engines
        # without the ATTACHed "test_schema" the provisioning sets up on the main engine
        return exclusions.skip_if("sqlite", "extra engines lack the attached test_schema")

    @property
    def emulated_lastrowid(self) -> Rule:
        return exclusions.open()

    @property
    def dbapi_lastrowid(self) -> Rule:
        return exclusions.open()

    @property
    def emulated_lastrowid_even_with_sequences(self) -> Rule:
        return exclusions.open()

    # --- types -------------------------------------------------------------------------

    @property
    def json_type(self) -> Rule:
        return exclusions.open()

    @property
    def legacy_unconditional_json_extract(self) -> Rule:
        return exclusions.open()  # JSON_EXTRACT is what the sqlite dialect renders

    @property
    def json_index_supplementary_unicode_element(self) -> Rule:
        return exclusions.open()

    @property
    def datetime_literals(self) -> Rule:
        return exclusions.open()

    @property
    def datetime_historic(self) -> Rule:
        return exclusions.open()

    @property
    def date_historic(self) -> Rule:
        return exclusions.open()

    @property
    def precision_numerics_enotation_small(self) -> Rule:
        return exclusions.open()

    @property
    def precision_numerics_retains_significant_digits(self) -> Rule:
        return exclusions.open()

    @property
    def precision_numerics_many_significant_digits(self) -> Rule:
        # NUMERIC affinity stores a REAL: more than ~15 significant digits are lost
        return exclusions.closed()

    @property
    def infinity_floats(self) -> Rule:
        return exclusions.open()

    # --- transactions ------------------------------------------------------------------

    @property
    def savepoints(self) -> Rule:
        # works only with SQLAlchemy's documented recipe (BEGIN emitted by an event)
        return exclusions.closed()

    @property
    def autocommit(self) -> Rule:
        return exclusions.open()

    @property
    def skip_autocommit_rollback(self) -> Rule:
        return exclusions.open()  # pysqlite detects autocommit (isolation_level None)

    def get_isolation_levels(self, config: Any) -> dict[str, Any]:
        return {
            "default": "SERIALIZABLE",
            "supported": {"SERIALIZABLE", "READ UNCOMMITTED", "AUTOCOMMIT"},
        }

    def get_order_by_collation(self, config: Any) -> str:
        return "NOCASE"
