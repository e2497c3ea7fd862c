{# Lower-case hex SHA-256 of a text expression. #}
{% macro sha256_hex(expression) -%}
    {{ return(adapter.dispatch('sha256_hex', 'retailml')(expression)) }}
{%- endmacro %}

{% macro default__sha256_hex(expression) -%}
    encode(sha256(convert_to({{ expression }}, 'UTF8')), 'hex')
{%- endmacro %}

{% macro duckdb__sha256_hex(expression) -%}
    sha256({{ expression }})
{%- endmacro %}

{% macro bigquery__sha256_hex(expression) -%}
    to_hex(sha256({{ expression }}))
{%- endmacro %}


{# The text a surrogate key hashes: the key columns as text, nulls and separators explicit. #}
{% macro surrogate_key_text(columns) -%}
    {%- set parts = [] -%}
    {%- for column in columns -%}
        {%- do parts.append("coalesce(cast(" ~ column ~ " as " ~ dbt.type_string() ~ "), '_null_')") -%}
    {%- endfor -%}
    {{ return(parts | join(" || '|' || ")) }}
{%- endmacro %}


{# Text surrogate key: md5 hex over the key columns. #}
{% macro text_surrogate_key(columns) -%}
    {{ dbt.hash(surrogate_key_text(columns)) }}
{%- endmacro %}


{#
    Integer surrogate key: the first 60 bits of md5 over the key columns, so it is positive
    (special dimension members use negative keys), stable across rebuilds and incremental
    runs, and identical on every warehouse.
#}
{% macro integer_surrogate_key(columns) -%}
    {{ return(adapter.dispatch('md5_to_bigint', 'retailml')(surrogate_key_text(columns))) }}
{%- endmacro %}

{% macro default__md5_to_bigint(expression) -%}
    cast(cast(('x' || substr(md5({{ expression }}), 1, 15)) as bit(60)) as bigint)
{%- endmacro %}

{% macro duckdb__md5_to_bigint(expression) -%}
    cast(('0x' || substr(md5({{ expression }}), 1, 15)) as bigint)
{%- endmacro %}

{% macro bigquery__md5_to_bigint(expression) -%}
    cast(concat('0x', substr(to_hex(md5({{ expression }})), 1, 15)) as int64)
{%- endmacro %}
