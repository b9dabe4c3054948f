"""Development tools (the dev stack, the SMTP2Go simulator): no production import loads them."""
