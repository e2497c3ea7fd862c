{#
    Time zone conversions. Raw order timestamps are naive wall-clock times in the shop's zone
    (var shop_timezone); Mongo timestamps are naive UTC. Models store instants as UTC
    (*_at columns, type_timestamptz) and business dates as calendar dates in the shop's zone
    (*_date columns), so nothing depends on the session time zone.
#}

{# Naive wall-clock timestamp in `timezone` -> instant. #}
{% macro naive_to_utc(column, timezone=none) -%}
    {{ return(adapter.dispatch('naive_to_utc', 'retailml')(column, timezone or var('shop_timezone'))) }}
{%- endmacro %}

{% macro default__naive_to_utc(column, timezone) -%}
    ({{ column }} at time zone '{{ timezone }}')
{%- endmacro %}

{% macro duckdb__naive_to_utc(column, timezone) -%}
    timezone('{{ timezone }}', {{ column }})
{%- endmacro %}

{% macro bigquery__naive_to_utc(column, timezone) -%}
    timestamp({{ column }}, '{{ timezone }}')
{%- endmacro %}


{# Instant -> calendar date in `timezone` (default: the shop's). #}
{% macro utc_to_local_date(column, timezone=none) -%}
    {{ return(adapter.dispatch('utc_to_local_date', 'retailml')(column, timezone or var('shop_timezone'))) }}
{%- endmacro %}

{% macro default__utc_to_local_date(column, timezone) -%}
    cast(({{ column }} at time zone '{{ timezone }}') as date)
{%- endmacro %}

{% macro duckdb__utc_to_local_date(column, timezone) -%}
    cast(timezone('{{ timezone }}', {{ column }}) as date)
{%- endmacro %}

{% macro bigquery__utc_to_local_date(column, timezone) -%}
    date({{ column }}, '{{ timezone }}')
{%- endmacro %}


{# Microseconds since 1970-01-01 00:00:00 UTC of an instant, as bigint (exact on every target). #}
{% macro epoch_microseconds(column) -%}
    {{ return(adapter.dispatch('epoch_microseconds', 'retailml')(column)) }}
{%- endmacro %}

{% macro default__epoch_microseconds(column) -%}
    cast(extract(epoch from {{ column }}) * 1000000 as {{ dbt.type_bigint() }})
{%- endmacro %}

{% macro duckdb__epoch_microseconds(column) -%}
    epoch_us({{ column }})
{%- endmacro %}

{% macro bigquery__epoch_microseconds(column) -%}
    unix_micros({{ column }})
{%- endmacro %}


{# The instant a shop-local calendar day starts (its local midnight), as an instant. #}
{% macro local_day_start(date_expression, timezone=none) -%}
    {{ return(adapter.dispatch('local_day_start', 'retailml')(date_expression, timezone or var('shop_timezone'))) }}
{%- endmacro %}

{% macro default__local_day_start(date_expression, timezone) -%}
    {{ default__naive_to_utc('cast(' ~ date_expression ~ ' as timestamp)', timezone) }}
{%- endmacro %}

{% macro duckdb__local_day_start(date_expression, timezone) -%}
    {{ duckdb__naive_to_utc('cast(' ~ date_expression ~ ' as timestamp)', timezone) }}
{%- endmacro %}

{% macro bigquery__local_day_start(date_expression, timezone) -%}
    timestamp({{ date_expression }}, '{{ timezone }}')
{%- endmacro %}
