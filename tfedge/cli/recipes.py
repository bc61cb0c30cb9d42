"""`tfedge recipes list|show|check|schema`."""

from __future__ import annotations

import click

from tfedge.cli.options import echo_json, echo_table, json_option, set_option


@click.group("recipes")
def recipes_cmd():
    """Built-in compression recipes for `tfedge optimize`.

    \b
    Example:
        tfedge recipes show prune-cluster-qat > my.yaml
        tfedge recipes schema > recipe.schema.json
    """


@recipes_cmd.command("list")
@json_option
def list_cmd(as_json):
    """List the built-in recipes and their passes."""
    from tfedge.optimize.recipe import builtin_recipes, load_recipe

    recipes = [load_recipe(name) for name in builtin_recipes()]
    if as_json:
        echo_json(
            [
                {"name": r.name, "passes": r.pass_names, "description": r.description}
                for r in recipes
            ]
        )
        return
    echo_table(
        ["recipe", "passes", "description"],
        [[r.name, " -> ".join(r.pass_names) or "-", r.description] for r in recipes],
    )


@recipes_cmd.command("show")
@click.argument("name", metavar="NAME|FILE")
@set_option
@click.option(
    "--full", is_flag=True, help="Print every option, defaults filled in (the normalised recipe)."
)
def show_cmd(name, overrides, full):
    """Print a recipe's YAML (a starting point for your own)."""
    from tfedge.optimize.recipe import dump_recipe, load_recipe

    recipe = load_recipe(name, overrides)
    click.echo(dump_recipe(recipe) if full else recipe.text, nl=False)


@recipes_cmd.command("check")
@click.argument("name", metavar="NAME|FILE")
@set_option
@json_option
def check_cmd(name, overrides, as_json):
    """Validate a recipe without training anything; print its canonical hash.

    The hash is of the normalised content (defaults filled in): comments, key order, name and
    description do not change it.
    """
    from tfedge.optimize.recipe import load_recipe

    recipe = load_recipe(name, overrides)
    if as_json:
        echo_json(
            {
                "source": recipe.source,
                "passes": recipe.pass_names,
                "canonical_sha256": recipe.canonical_sha256,
                "recipe": recipe.to_dict(),
            }
        )
        return
    click.echo(
        f"{recipe.source}: ok ({' -> '.join(recipe.pass_names) or 'no passes'}), "
        f"canonical sha256 {recipe.canonical_sha256[:12]}"
    )


@recipes_cmd.command("schema")
def schema_cmd():
    """Print the JSON Schema of a recipe file, for editors that validate YAML as you type.

    \b
    Example (VS Code with the YAML extension):
        tfedge recipes schema > recipe.schema.json
        # first line of my.yaml:
        # yaml-language-server: $schema=recipe.schema.json
    """
    import json

    from tfedge.optimize.recipe import recipe_json_schema

    click.echo(json.dumps(recipe_json_schema(), indent=2))
