"""`tfedge recipes list|show|check`."""

from __future__ import annotations

import click

from tfedge.cli.options import echo_json, echo_table, json_option


@click.group("recipes")
def recipes_cmd():
    """Built-in compression recipes for `tfedge optimize`.

    \b
    Example:
        tfedge recipes show prune-cluster-qat > my.yaml
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
def show_cmd(name):
    """Print a recipe's YAML (a starting point for your own)."""
    from tfedge.optimize.recipe import load_recipe

    click.echo(load_recipe(name).text, nl=False)


@recipes_cmd.command("check")
@click.argument("name", metavar="NAME|FILE")
def check_cmd(name):
    """Validate a recipe without training anything."""
    from tfedge.optimize.recipe import load_recipe

    recipe = load_recipe(name)
    click.echo(
        f"{recipe.source}: ok ({' -> '.join(recipe.pass_names) or 'no passes'}), "
        f"sha256 {recipe.sha256[:12]}"
    )
