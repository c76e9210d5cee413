"""`trackedit studio`: a local browser page that writes edit specs, previews the target tracks and runs edits.

`api` holds the library side (the scene, spec in -> target projections + report out, path checks),
`jobs` the background edit jobs (progress, cancellation, atomic outputs), `server` the HTTP layer
(loopback only, a random token on every request) and `static/` the page (plain JS + canvas, no CDN).
"""
