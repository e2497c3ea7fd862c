{# Every row of the model satisfies `expression` (rows where it is false or null fail). #}
{% test expression_is_true(model, expression) %}

with

failing as (

    select * from {{ model }}
    where not coalesce({{ expression }}, false)

)

select * from failing

{% endtest %}
