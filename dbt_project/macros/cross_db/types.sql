{#
    Column types the models cast to explicitly, so DuckDB, PostgreSQL and BigQuery produce the
    same logical types (and the enforced contracts match on each). dbt's own type_float() is
    FLOAT, which DuckDB reads as 4-byte REAL, hence type_double().
#}
{% macro type_double() -%}
    {{ return(adapter.dispatch('type_double', 'retailml')()) }}
{%- endmacro %}

{% macro default__type_double() -%}
    {{ return('double precision') }}
{%- endmacro %}

{% macro duckdb__type_double() -%}
    {{ return('double') }}
{%- endmacro %}

{% macro bigquery__type_double() -%}
    {{ return('float64') }}
{%- endmacro %}


{# An instant in time (UTC); BigQuery's TIMESTAMP is always one. #}
{% macro type_timestamptz() -%}
    {{ return(adapter.dispatch('type_timestamptz', 'retailml')()) }}
{%- endmacro %}

{% macro default__type_timestamptz() -%}
    {{ return('timestamp with time zone') }}
{%- endmacro %}

{% macro bigquery__type_timestamptz() -%}
    {{ return('timestamp') }}
{%- endmacro %}


{# The instant a dbt invocation started (UTC), as a typed literal: the `transformed_at` of its rows. #}
{% macro run_started_at_literal() -%}
    cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") }}+00:00' as {{ type_timestamptz() }})
{%- endmacro %}


{# A typed date literal from a Python date or an ISO string. #}
{% macro date_literal(value) -%}
    cast('{{ value }}' as date)
{%- endmacro %}
