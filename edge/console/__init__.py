"""The web console at /console: static HTML, CSS and ES modules (no build step, no CDN)
that drive the public and admin APIs from the browser with the token the user signs in with."""
