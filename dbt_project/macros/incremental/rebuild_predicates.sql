{#
    Helpers of the incremental models. Each finds, with a query at run time, which
    partitions (order days, months, cutoffs) a run must rebuild and returns a SQL predicate
    on literal values, so the filter reaches the scans below views and can use indexes. They
    are only called when is_incremental() is true (never at parse time, nor in a compile
    without introspection).
#}

{# The first value of the first row of `sql`, or none. #}
{% macro scalar_query(sql) %}
    {% set result = run_query(sql) %}
    {% if result.rows | length == 0 %}
        {{ return(none) }}
    {% endif %}
    {{ return(result.rows[0][0]) }}
{% endmacro %}


{# The values of the first column of `sql`, as a list. #}
{% macro column_query(sql) %}
    {{ return(run_query(sql).columns[0].values() | list) }}
{% endmacro %}


{# `column` in a list of ISO dates ('false' for an empty list). #}
{% macro date_in_list(column, iso_dates) -%}
    {%- if iso_dates | length == 0 -%}
        false
    {%- else -%}
        {{ column }} in ({% for day in iso_dates | sort %}{{ date_literal(day) }}{{ ", " if not loop.last }}{% endfor %})
    {%- endif -%}
{%- endmacro %}


{#
    Rebuild predicate of a model partitioned by day, fed by `source_model` whose rows carry
    `transformed_at` (the dbt run that last wrote them): the days holding rows written
    since this model's own last run (its max(transformed_at)). 'true' when this model is
    empty.
#}
{% macro days_transformed_since_last_run(source_model, source_date_column, column) %}
    {% set watermark = scalar_query(
        "select cast(max(transformed_at) as " ~ dbt.type_string() ~ ") from " ~ this
    ) %}
    {% if watermark is none %}
        {{ return('true') }}
    {% endif %}
    {% set days = column_query(
        "select distinct cast(" ~ source_date_column ~ " as " ~ dbt.type_string() ~ ") from " ~ source_model
        ~ " where transformed_at > cast('" ~ watermark ~ "' as " ~ type_timestamptz() ~ ")"
    ) %}
    {{ return(date_in_list(column, days)) }}
{% endmacro %}


{# First day of the month of a date expression, as a date. #}
{% macro month_start(date_expression) -%}
    cast({{ dbt.date_trunc('month', date_expression) }} as date)
{%- endmacro %}


{#
    Rebuild predicate of a model partitioned by month: `date_column` falls in a month that
    holds rows of `source_model` written since this model's own last run. 'true' when this
    model is empty.
#}
{% macro months_transformed_since_last_run(source_model, source_date_column, date_column) %}
    {% set watermark = scalar_query(
        "select cast(max(transformed_at) as " ~ dbt.type_string() ~ ") from " ~ this
    ) %}
    {% if watermark is none %}
        {{ return('true') }}
    {% endif %}
    {% set months = column_query(
        "select distinct cast(" ~ month_start(source_date_column) ~ " as " ~ dbt.type_string() ~ ") from "
        ~ source_model ~ " where transformed_at > cast('" ~ watermark ~ "' as " ~ type_timestamptz() ~ ")"
    ) %}
    {% if months | length == 0 %}
        {{ return('false') }}
    {% endif %}
    {% set ranges = [] %}
    {% for month in months | sort %}
        {% do ranges.append(
            "(" ~ date_column ~ " >= " ~ date_literal(month) ~ " and " ~ date_column ~ " < "
            ~ "cast(" ~ dbt.dateadd('month', 1, date_literal(month)) ~ " as date))"
        ) %}
    {% endfor %}
    {{ return("(" ~ ranges | join(" or ") ~ ")") }}
{% endmacro %}
