{# ISO day of week: 1 = Monday ... 7 = Sunday. #}
{% macro iso_day_of_week(date_expression) -%}
    {{ return(adapter.dispatch('iso_day_of_week', 'retailml')(date_expression)) }}
{%- endmacro %}

{% macro default__iso_day_of_week(date_expression) -%}
    cast(extract(isodow from {{ date_expression }}) as {{ dbt.type_bigint() }})
{%- endmacro %}

{% macro bigquery__iso_day_of_week(date_expression) -%}
    (mod(extract(dayofweek from {{ date_expression }}) + 5, 7) + 1)
{%- endmacro %}


{# A date plus a (possibly negative, possibly non-constant) number of days, as a date. #}
{% macro add_days(date_expression, days) -%}
    cast({{ dbt.dateadd('day', days, date_expression) }} as date)
{%- endmacro %}


{# Whole days from start_date to end_date (end - start), as bigint. #}
{% macro days_between(start_date, end_date) -%}
    cast({{ dbt.datediff(start_date, end_date, 'day') }} as {{ dbt.type_bigint() }})
{%- endmacro %}


{#
    One row (`date_day`) per calendar day from `start_column` to `end_column` inclusive, for
    each row of `bounds_relation` (a CTE or relation holding those two date columns).
#}
{% macro date_series(bounds_relation, start_column, end_column) -%}
    {{ return(adapter.dispatch('date_series', 'retailml')(bounds_relation, start_column, end_column)) }}
{%- endmacro %}

{# Also valid DuckDB SQL. #}
{% macro default__date_series(bounds_relation, start_column, end_column) -%}
    select cast(series.date_day as date) as date_day
    from {{ bounds_relation }}
    cross join lateral generate_series(
        cast({{ bounds_relation }}.{{ start_column }} as timestamp),
        cast({{ bounds_relation }}.{{ end_column }} as timestamp),
        interval '1 day'
    ) as series (date_day)
{%- endmacro %}

{% macro bigquery__date_series(bounds_relation, start_column, end_column) -%}
    select date_day
    from {{ bounds_relation }}
    cross join unnest(generate_date_array(
        {{ bounds_relation }}.{{ start_column }}, {{ bounds_relation }}.{{ end_column }}
    )) as date_day
{%- endmacro %}


{# Whole calendar months from the month of start_date to the month of end_date, as bigint. #}
{% macro months_between(start_date, end_date) -%}
    cast(
        (extract(year from {{ end_date }}) - extract(year from {{ start_date }})) * 12
        + extract(month from {{ end_date }}) - extract(month from {{ start_date }})
        as {{ dbt.type_bigint() }}
    )
{%- endmacro %}
