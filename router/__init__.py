"""HTTP routing: `Host: <app>.<domain>` -> a web instance of the app."""
