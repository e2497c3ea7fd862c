{#
    The rebuild predicates of fct_order_lines and int_churn_training (see the models'
    headers). Called only when is_incremental(); they query the model's own table.
#}

{#
    Order days fct_order_lines rebuilds: the lookback window from the latest loaded day,
    plus every day with lines extracted after the latest extraction already loaded, with
    lines still on an unknown member, or with lines whose dimension version no longer
    covers their ordered_at (a version extracted since then took effect earlier).
#}
{% macro fct_order_lines_rebuild_predicate() %}
    {% set string = dbt.type_string() %}
    {% set state = run_query(
        "select cast(" ~ add_days('max(order_date)', -(var('incremental_lookback_days') | int)) ~ " as " ~ string ~ "),"
        ~ " cast(max(extracted_at) as " ~ string ~ ") from " ~ this
    ).rows[0] %}
    {% if state[0] is none %}
        {{ return('true') }}
    {% endif %}
    {% set since_extracted = "cast('" ~ state[1] ~ "' as " ~ type_timestamptz() ~ ")" %}
    {% set late_days_sql %}
        -- lines extracted after the latest extraction already loaded
        select cast(order_date as {{ string }}) from {{ ref('stg_shop__order_line_extractions') }}
        where extracted_at > {{ since_extracted }}
        union
        -- lines still on an unknown member
        select cast(order_date as {{ string }}) from {{ this }}
        where customer_sk = -1 or product_sk = -1
        {%- for dimension, key in [('dim_customers', 'customer'), ('dim_products', 'product')] %}
        union
        -- lines whose version no longer covers their ordered_at
        select cast(lines.order_date as {{ string }})
        from {{ this }} as lines
        inner join {{ ref(dimension) }} as versions
            on lines.{{ key }}_sk = versions.{{ key }}_sk
        where
            versions.{{ key }}_id in (
                select changed.{{ key }}_id from {{ ref(dimension) }} as changed
                where changed.extracted_at > {{ since_extracted }}
            )
            and (
                lines.ordered_at < versions.valid_from
                or lines.ordered_at >= versions.valid_to
            )
        {%- endfor %}
    {% endset %}
    {% set late_days = column_query(late_days_sql) %}
    {{ return("(order_date >= " ~ date_literal(state[0]) ~ " or " ~ date_in_list('order_date', late_days) ~ ")") }}
{% endmacro %}


{#
    Cutoffs int_churn_training rebuilds: new ones (after the latest built), and every
    cutoff after (earliest changed day - horizon), where the changed days are those of
    fct_orders and int_customer_categories_daily rows written since this model's last run
    and the days on which customer versions extracted since then took effect.
#}
{% macro int_churn_training_rebuild_predicate() %}
    {% set string = dbt.type_string() %}
    {% set horizon_days = var('churn_horizon_days') | int %}
    {% set state = run_query(
        "select cast(max(cutoff_date) as " ~ string ~ "), cast(max(transformed_at) as " ~ string ~ ") from " ~ this
    ).rows[0] %}
    {% if state[0] is none %}
        {{ return('true') }}
    {% endif %}
    {% set since = "cast('" ~ state[1] ~ "' as " ~ type_timestamptz() ~ ")" %}
    {% set first_changed_day = scalar_query(
        "select cast(min(changed_day) as " ~ string ~ ") from ("
        ~ " select min(order_date) as changed_day from " ~ ref('fct_orders')
        ~ " where transformed_at > " ~ since
        ~ " union all"
        ~ " select min(order_date) from " ~ ref('int_customer_categories_daily')
        ~ " where transformed_at > " ~ since
        ~ " union all"
        ~ " select min(" ~ utc_to_local_date('valid_from') ~ ") from " ~ ref('dim_customers')
        ~ " where customer_sk > 0 and extracted_at > " ~ since
        ~ ") as changes"
    ) %}
    {% set predicate = "cutoff_date > " ~ date_literal(state[0]) %}
    {% if first_changed_day is not none %}
        {% set predicate = predicate ~ " or cutoff_date > " ~ add_days(date_literal(first_changed_day), -horizon_days) %}
    {% endif %}
    {{ return(predicate) }}
{% endmacro %}
