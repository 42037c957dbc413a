// Shared by the workbench pages: $(), the nav bar, JSON requests. errorText and postEvents come
// from the monitor's /monitor/sse.js, loaded before this file.
const $ = (id) => document.getElementById(id);
async function nav() {
  const html = await (await fetch("/static/nav.html")).text();
  document.body.insertAdjacentHTML("afterbegin", html);
}
async function postJSON(url, body) {
  const resp = await fetch(url, { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json" } });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp.json();
}
function showToken(t) { return t.replace(/\n/g, "↵\n").replace(/\t/g, "→"); }
function num(x) { return x === null || x === undefined ? "–" : (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : +x.toPrecision(3)); }
