{#
    Use a model's custom schema as-is instead of dbt's default "<target_schema>_<custom>", so the
    warehouse schemas are exactly raw, staging, core and marts on every target (on BigQuery:
    datasets of those names). Nodes without a custom schema land in the target's schema.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
