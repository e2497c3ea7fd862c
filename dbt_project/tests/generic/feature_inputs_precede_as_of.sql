{#
    Point-in-time check of an ML table: re-derives, through the macros the features are
    computed with (feature_orders, feature_categories, feature_attributes), what each row
    (customer_id, `as_of_column`) may see, and fails for every order or purchased category
    dated on or after the row's as-of day and every customer version that took effect on
    or after the as-of day started. A change to those macros that lets a feature see its
    cutoff day or later fails this test.

    `latest_as_of_days` (optional) checks only the rows of the N latest as-of days among
    the rows tested: the join it re-derives costs as much as the model, and every as-of day
    goes through the same macros. `test_all_rows` lifts the limit.
#}
{% test feature_inputs_precede_as_of(model, as_of_column, latest_as_of_days=none) %}

with

tested_rows as (

    select
        customer_id,
        {{ as_of_column }} as as_of_date
    from {{ model }}

),

{% if latest_as_of_days and not var('test_all_rows', false) %}
latest_as_of_days as (

    select distinct as_of_date from tested_rows
    order by as_of_date desc
    limit {{ latest_as_of_days | int }}

),

spine as (

    select distinct
        tested_rows.customer_id,
        tested_rows.as_of_date
    from tested_rows
    inner join latest_as_of_days
        on tested_rows.as_of_date = latest_as_of_days.as_of_date

),
{% else %}
spine as (

    select distinct
        customer_id,
        as_of_date
    from tested_rows

),
{% endif %}

orders as (

    select * from {{ ref('fct_orders') }}

),

customer_versions as (

    select * from {{ ref('dim_customers') }}
    where customer_sk > 0

),

customer_categories as (

    select * from {{ ref('int_customer_categories_daily') }}

),

customer_orders as (

    {{ customer_orders('orders') }}

),

seen as (

    select
        customer_id,
        as_of_date,
        'order ' || order_id as input,
        order_date as input_date
    from ({{ feature_orders('spine', 'customer_orders') }}) as seen_orders

    union all

    select
        customer_id,
        as_of_date,
        'category ' || category as input,
        order_date as input_date
    from ({{ feature_categories('spine', 'customer_categories') }}) as seen_categories

    union all

    select
        customer_id,
        as_of_date,
        'customer version' as input,
        {{ utc_to_local_date('attributes_valid_from') }} as input_date
    from ({{ feature_attributes('spine', 'customer_versions') }}) as seen_attributes
    where attributes_valid_from >= {{ local_day_start('as_of_date') }}

),

final as (

    select * from seen
    where input_date >= as_of_date

)

select * from final

{% endtest %}
