"""The commands that need neither side: `keys init|export|node`, `certs`, `model fetch`."""
