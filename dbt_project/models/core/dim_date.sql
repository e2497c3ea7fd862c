{#
    The calendar spans the order days in fct_order_lines (min/max come from its order_date
    index or zone maps, so this stays cheap on a large fact).
#}

with

order_lines as (

    select order_date from {{ ref('fct_order_lines') }}

),

bounds as (

    select
        min(order_date) as first_date,
        max(order_date) as last_date
    from order_lines

),

days as (

    {{ date_series('bounds', 'first_date', 'last_date') }}

),

day_parts as (

    select
        date_day,
        cast(extract(year from date_day) as {{ dbt.type_bigint() }}) as calendar_year,
        cast(extract(quarter from date_day) as {{ dbt.type_bigint() }}) as calendar_quarter,
        cast(extract(month from date_day) as {{ dbt.type_bigint() }}) as calendar_month,
        cast(extract(day from date_day) as {{ dbt.type_bigint() }}) as day_of_month,
        {{ iso_day_of_week('date_day') }} as day_of_week
    from days

),

final as (

    select
        date_day,
        calendar_year,
        calendar_quarter,
        calendar_month,
        day_of_month,
        day_of_week,
        day_of_week >= 6 as is_weekend,
        {{ add_days('date_day', '1 - day_of_week') }} as week_start_date,
        {{ add_days('date_day', '1 - day_of_month') }} as month_start_date
    from day_parts

)

select * from final
