{#
    The snapshots' "now" as an instant (timestamptz), like their updated_at column: dbt's
    DuckDB and PostgreSQL defaults cast it to a naive timestamp and warn on every run that
    the types differ. (Only hard deletes would use it; the snapshots ignore them.)
#}
{% macro duckdb__snapshot_get_time() -%}
    cast(current_timestamp as {{ type_timestamptz() }})
{%- endmacro %}

{% macro postgres__snapshot_get_time() -%}
    cast(current_timestamp as {{ type_timestamptz() }})
{%- endmacro %}
