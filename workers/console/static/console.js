// kneenode console: keep the live parts of a page current without reloading it.
// Every element with data-live="URL" gets its content replaced by the HTML fragment at URL
// every two seconds (only while the tab is visible, and not while the user is in one of its
// form fields: the job page's action forms live there too). A redirect to the login page reloads.
"use strict";
for (const el of document.querySelectorAll("[data-live]")) {
  const every = Number(el.dataset.every || 2000);
  let last = null;
  const tick = async () => {
    const busy = el.contains(document.activeElement) && document.activeElement.matches('select, input, textarea');
    if (!document.hidden && !busy) {
      try {
        const r = await fetch(el.dataset.live, {credentials: "same-origin", cache: "no-store"});
        if (r.redirected || r.status === 401) { location.reload(); return; }
        const html = r.ok ? await r.text() : null;
        if (html !== null && html !== last) {  // unchanged: leave the elements (and clicks) be
          el.innerHTML = html;
          last = html;
        }
        if (html !== null) el.dataset.refreshed = String(Number(el.dataset.refreshed || 0) + 1);
      } catch (e) { /* the node restarting: try again on the next tick */ }
    }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}
