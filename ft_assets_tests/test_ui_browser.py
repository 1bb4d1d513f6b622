"""The Dagster UI in a real browser, as a person uses it: Debian's chromium driven by Playwright over
`dagster dev` — the asset graph, Materialize on a dataset, the run, the report's metadata."""

import os
from pathlib import Path

import pytest
import yaml

from ft_assets_tests.conftest import REPO, write_project
from ft_assets_tests.helpers import (
    dagster_dev, learning_recipes, materialize_from_ui, selected_nodes, wait_for, wait_for_run,
)

CHROMIUM = "/usr/bin/chromium"
# Flags that keep chromium off the network this machine does not have (see the brief).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
UI_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser_page():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (`make test` installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


def test_materialize_a_dataset_from_the_ui_and_read_the_report(tmp_path, tiny_model_dir, browser_page):
    config_path = write_project(tmp_path, tiny_model_dir, n_per_label=60,
                                recipes=learning_recipes(tiny_model_dir, full_gates={})[:1])
    raw = yaml.safe_load(config_path.read_text())
    raw["automation"] = {"enabled": False}  # every run here is a click
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    with dagster_dev(tmp_path, config_path) as server:
        # The raw corpus first, as the dataset reads it.
        assert wait_for_run(server, materialize_from_ui(server, [["raw", "tickets"]])) == "SUCCESS"

        page.goto(f"{server.url}/asset-groups")
        page.get_by_text("Global asset lineage").wait_for()
        dismiss_the_newsletter_prompt(page)
        for group in ("raw", "datasets", "training", "evaluation", "models"):
            page.get_by_text(group, exact=True).first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))

        page.goto(f"{server.url}/assets/datasets/tickets")
        page.get_by_text("Materialize", exact=True).first.click()

        def dataset_materialized():
            node = selected_nodes(server, [["datasets", "tickets"]])[0]
            return node["assetMaterializations"] or None
        run_id = wait_for(dataset_materialized, 180, "the dataset materialized from the UI", server)[0]["runId"]
        assert wait_for_run(server, run_id) == "SUCCESS"

        trained = materialize_from_ui(server, [["checkpoints", "tiny_full"], ["reports", "tiny_full"]])
        assert wait_for_run(server, trained) == "SUCCESS"
        page.goto(f"{server.url}/assets/reports/tiny_full")
        dismiss_the_newsletter_prompt(page)
        for entry in ("accuracy", "macro_f1", "trainable_params", "gates"):
            page.get_by_text(entry, exact=True).first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        page.get_by_text("Checks", exact=True).first.click()
        page.get_by_text("beats_baselines").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "report_checks.png"))


def dismiss_the_newsletter_prompt(page) -> None:
    """A new instance's UI opens with a "Join the Dagster community" dialog over the page."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except Exception:  # Playwright's TimeoutError: no dialog this time
        return
    skip.click()
