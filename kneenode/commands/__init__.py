"""CLI command modules; each registers its commands on :data:`kneenode.cli_app.app`."""
