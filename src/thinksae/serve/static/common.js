// Shared by the workbench pages: $(), the nav bar, JSON and server-sent-event requests.
const $ = (id) => document.getElementById(id);
async function nav() {
  const html = await (await fetch("/static/nav.html")).text();
  document.body.insertAdjacentHTML("afterbegin", html);
}
async function errorText(resp) {
  let msg = `HTTP ${resp.status}`;
  try { msg += `: ${(await resp.json()).error}`; } catch (e) { /* not JSON */ }
  return msg;
}
async function postJSON(url, body) {
  const resp = await fetch(url, { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json" } });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp.json();
}
async function postEvents(url, body, handle, signal) {
  const resp = await fetch(url, { method: "POST", body: JSON.stringify(body), signal,
    headers: { "Content-Type": "application/json" } });
  if (!resp.ok) throw new Error(await errorText(resp));
  const reader = resp.body.getReader(), decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (data) handle(JSON.parse(data));
    }
  }
}
function showToken(t) { return t.replace(/\n/g, "↵\n").replace(/\t/g, "→"); }
function num(x) { return x === null || x === undefined ? "–" : (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : +x.toPrecision(3)); }
