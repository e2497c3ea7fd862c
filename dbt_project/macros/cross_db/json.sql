{#
    Text value at a path inside a JSON document (DuckDB JSON, PostgreSQL json/jsonb, BigQuery
    JSON or STRING); null when the path is missing. `path` is a list of keys, e.g.
    ['address', 'country'].
#}
{% macro json_extract_text(column, path) -%}
    {{ return(adapter.dispatch('json_extract_text', 'retailml')(column, path)) }}
{%- endmacro %}

{% macro default__json_extract_text(column, path) -%}
    ({{ column }} #>> '{{ "{" ~ path | join(",") ~ "}" }}')
{%- endmacro %}

{% macro duckdb__json_extract_text(column, path) -%}
    json_extract_string({{ column }}, '$.{{ path | join(".") }}')
{%- endmacro %}

{% macro bigquery__json_extract_text(column, path) -%}
    json_value({{ column }}, '$.{{ path | join(".") }}')
{%- endmacro %}
