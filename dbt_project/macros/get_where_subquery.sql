{#
    dbt's `where` config of data tests, plus placeholders for the large incremental tables,
    so that a daily run tests what it wrote instead of rescanning whole tables:
      - `__latest_run__`: the rows the model's latest run wrote. In a `dbt build`/`dbt run`
        that selected the model, the rows this invocation wrote (transformed_at >= its
        start: every row after a full refresh, none when the run changed nothing);
        otherwise (`dbt test`) the rows of the model's latest run (max(transformed_at)).
      - `__latest_run_of(<schema>.<table>, <column>)__`: for a view of such a table, the
        rows whose <column> value the table's latest run wrote, in the same sense.
    Every row was tested by the run that wrote it. `--vars '{test_all_rows: true}'` tests
    every row.
#}
{% macro get_where_subquery(relation) -%}
    {% set where = config.get('where', '') %}
    {% if where and '__latest_run' in where %}
        {% set everything = var('test_all_rows', false) %}
        {% set built_now = flags.WHICH in ('build', 'run')
            and (model.depends_on.nodes | select('in', selected_resources) | list | length) > 0 %}
        {% set latest_run = 'transformed_at >= ' ~ run_started_at_literal() if built_now
            else 'transformed_at = (select max(transformed_at) from {table})' %}
        {% set where = where | replace(
            '__latest_run__', 'true' if everything else latest_run | replace('{table}', relation | string)
        ) %}
        {% set match = modules.re.search('__latest_run_of\\(\\s*(\\w+)\\.(\\w+)\\s*,\\s*(\\w+)\\s*\\)__', where) %}
        {% if match %}
            {% set source = api.Relation.create(
                database=target.database, schema=match.group(1), identifier=match.group(2)
            ) %}
            {% set column = match.group(3) %}
            {% set where = where | replace(
                match.group(0),
                'true' if everything else column ~ ' in (select ' ~ column ~ ' from ' ~ source
                ~ ' where ' ~ latest_run | replace('{table}', source | string) ~ ')'
            ) %}
        {% endif %}
    {% endif %}
    {% if where %}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {% do return(filtered) %}
    {% endif %}
    {% do return(relation) %}
{%- endmacro %}
