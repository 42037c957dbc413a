// Server-sent events over a POST (EventSource only does GET), shared by the monitor page and the
// workbench (which loads it from /monitor/sse.js): errorText(resp) and postEvents(url, body, handle, signal),
// which throws an Error named "HTTPError" carrying the server's one-line message on a 4xx/5xx.
async function errorText(resp) {
  let msg = `HTTP ${resp.status}`;
  try { msg += `: ${(await resp.json()).error}`; } catch (e) { /* not JSON */ }
  return msg;
}
async function postEvents(url, body, handle, signal) {
  const resp = await fetch(url, { method: "POST", body: JSON.stringify(body), signal,
    headers: { "Content-Type": "application/json" } });
  if (!resp.ok) throw Object.assign(new Error(await errorText(resp)), { name: "HTTPError" });
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
