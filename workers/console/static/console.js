// kneenode console: keep the live parts of a page current without reloading it.
// Every element with data-live="URL" gets its content replaced by the HTML fragment at URL
// every two seconds (only while the tab is visible). A 401/303 to the login page reloads.
"use strict";
for (const el of document.querySelectorAll("[data-live]")) {
  const every = Number(el.dataset.every || 2000);
  const tick = async () => {
    if (!document.hidden) {
      try {
        const r = await fetch(el.dataset.live, {credentials: "same-origin", cache: "no-store"});
        if (r.redirected || r.status === 401) { location.reload(); return; }
        if (r.ok) {
          el.innerHTML = await r.text();
          el.dataset.refreshed = String(Number(el.dataset.refreshed || 0) + 1);
        }
      } catch (e) { /* the node restarting: try again on the next tick */ }
    }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}
