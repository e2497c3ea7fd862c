{#
    Load bookkeeping for the incremental facts: which order days received lines in which
    extraction. Grouped on (order_date, extracted_at) so a filter on extracted_at reaches the
    raw table's scan (a filter through stg_shop__order_lines' de-duplication could not).
#}

with

source as (

    select * from {{ source('shop', 'order_lines') }}

),

final as (

    select
        -- the shop's calendar day: the date of the local wall-clock time
        cast(ordered_at as date) as order_date,
        _extracted_at as extracted_at,
        count(*) as line_count
    from source
    group by cast(ordered_at as date), _extracted_at

)

select * from final
