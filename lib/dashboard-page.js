'use strict'
// The dashboard page: one HTML document with everything inlined (uPlot, its stylesheet, the page's own
// script and style), so it makes no request but to its own server, and a Content-Security-Policy that lets
// it run only those inlined parts (by hash).
const crypto = require('node:crypto')
const { formatDuration, formatBytes } = require('./format.js')

function uplot() {
  try {
    return require('./uplot.generated.js')
  } catch (err) {
    if (err.code !== 'MODULE_NOT_FOUND') throw err
  }
  // A checkout where the build step has not run yet: generate it from the devDependency.
  try {
    const script = require('../scripts/build-dashboard.js')
    script.write()
    return require('./uplot.generated.js')
  } catch (err) {
    const e = new Error(`the dashboard's chart library is missing (lib/uplot.generated.js): run "npm run build" (${err.message})`)
    e.code = 'ERR_INTERNAL'
    throw e
  }
}

const STYLE = `
:root { color-scheme: light; --fg: #1d2125; --muted: #5c6670; --line: #dfe3e8; --bg: #f6f7f9; --card: #fff; --accent: #1864ab; --bad: #c92a2a; --good: #2b8a3e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; padding: 14px 20px; background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { font-size: 17px; margin: 0; }
header .sub { color: var(--muted); overflow-wrap: anywhere; }
header .conn { margin-left: auto; color: var(--muted); font-variant-numeric: tabular-nums; }
header .conn.lost { color: var(--bad); font-weight: 600; }
main { padding: 16px 20px 24px; }
.note { color: var(--muted); margin: 0 0 10px; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line); border-radius: 6px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; text-align: left; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; }
td.name { max-width: 260px; overflow: hidden; text-overflow: ellipsis; font-weight: 600; }
tr.replica td.name { font-weight: normal; padding-left: 28px; color: var(--muted); }
tr.group td { background: #eef2f6; font-weight: 600; color: var(--muted); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; vertical-align: baseline; }
.state-running { color: var(--good); }
.state-orphaned, .state-unhealthy, .state-failed, .state-exited { color: var(--bad); font-weight: 600; }
.state-stale, .state-invalid, .state-foreign, .state-stopped { color: var(--muted); }
.state-restarting { color: #e67700; }
button { font: inherit; padding: 3px 10px; border: 1px solid var(--line); border-radius: 4px; background: var(--card); cursor: pointer; }
button:hover { border-color: var(--accent); color: var(--accent); }
button.danger { color: var(--bad); }
button + button { margin-left: 6px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; margin-top: 16px; }
.chart { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 8px; min-width: 0; }
.empty { color: var(--muted); padding: 14px; }
#notice { min-height: 1.4em; margin: 10px 0 0; color: var(--muted); }
#notice.error { color: var(--bad); }
#confirm { position: fixed; inset: 0; background: rgba(20, 24, 28, .45); display: flex; align-items: center; justify-content: center; }
#confirm[hidden] { display: none; }
#confirm .box { background: var(--card); border-radius: 8px; padding: 18px 20px; max-width: 460px; box-shadow: 0 8px 30px rgba(0, 0, 0, .25); }
#confirm p { margin: 0 0 14px; overflow-wrap: anywhere; }
#confirm .buttons { text-align: right; }
tr.details td { padding: 2px 10px 8px 28px; white-space: normal; color: var(--muted); font-size: 12px; }
tr.details .log-file { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
tr.details pre.stderr { margin: 4px 0 0; padding: 6px 8px; background: #fff5f5; color: var(--bad); border-radius: 4px; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; }
`

/**
 * Runs in the page (inlined as its source text). Reads the token from the page's own URL, listens to the
 * event stream, keeps five minutes of samples, draws the table and the four charts, and sends Stop and
 * Restart (with the token) after a confirmation in the page.
 */
/** Runs in the page; the CLI's formatters are passed in as source, so the page shows what the CLI shows. */
function client(duration, bytes) {
  'use strict'
  const token = new URLSearchParams(location.search).get('token') || ''
  const withToken = (path) => `${path}?token=${encodeURIComponent(token)}`
  const KEEP = 300
  const COLORS = ['#1864ab', '#e8590c', '#2b8a3e', '#9c36b5', '#c92a2a', '#0b7285', '#5f3dc4', '#a61e4d', '#5c940d', '#862e9c', '#d9480f', '#364fc7']
  const CHARTS = [
    { key: 'cpu', title: 'CPU, % of one core', pick: (b) => b.cpuPercent, fmt: (v) => `${v.toFixed(1)}%`, floor: 5 },
    { key: 'memory', title: 'Memory (whole tree), MiB', pick: (b) => (b.memoryBytes == null ? null : b.memoryBytes / 1048576), fmt: (v) => `${v.toFixed(1)} MiB`, floor: 1 },
    { key: 'latency', title: 'Health latency, ms', pick: (b) => b.healthLatencyMs, fmt: (v) => `${v.toFixed(1)} ms`, floor: 5 },
    { key: 'restarts', title: 'Restarts', pick: (b) => b.restarts, fmt: (v) => String(Math.round(v)), stepped: true, floor: 1 },
  ]
  const body = document.body.dataset
  const times = []
  const series = new Map() // backend key (the same across its restarts) → { label, values: { cpu: [], memory: [], latency: [], restarts: [] } }
  const charts = new Map() // chart key → uPlot
  let chartIds = ''
  let latest = null
  let pending = null

  const $ = (id) => document.getElementById(id)
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag)
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') node.className = v
      else if (k === 'data') Object.assign(node.dataset, v)
      else if (k === 'on') node.addEventListener('click', v)
      else node.setAttribute(k, v)
    }
    for (const c of children) if (c != null) node.append(c)
    return node
  }
  const health = (b) => {
    if (b.healthLatencyMs != null) return `${b.healthStatus ?? 'ok'} · ${b.healthLatencyMs.toFixed(1)} ms`
    if (b.healthError) return b.healthError
    return '-'
  }
  const label = (b) => (b.group ? `${b.group} / ${b.name}` : b.name)

  /** Adds one sample to the series; a backend missing from it gets a gap. */
  function add(sample) {
    times.push(sample.at / 1000)
    const seen = new Set()
    for (const b of sample.backends) {
      const key = b.key || b.id
      if (seen.has(key)) continue
      seen.add(key)
      let s = series.get(key)
      if (!s) {
        s = { label: label(b), values: Object.fromEntries(CHARTS.map((c) => [c.key, Array(times.length - 1).fill(null)])) }
        series.set(key, s)
      }
      s.label = label(b)
      for (const c of CHARTS) s.values[c.key].push(c.pick(b) ?? null)
    }
    for (const [id, s] of series) if (!seen.has(id)) for (const c of CHARTS) s.values[c.key].push(null)
    if (times.length > KEEP) {
      times.shift()
      for (const s of series.values()) for (const c of CHARTS) s.values[c.key].shift()
    }
    for (const [id, s] of series) if (CHARTS.every((c) => s.values[c.key].every((v) => v == null))) series.delete(id)
  }

  function colorOf(id) {
    const ids = [...series.keys()]
    return COLORS[Math.max(0, ids.indexOf(id)) % COLORS.length]
  }

  function chartWidth(node) {
    return Math.max(280, node.clientWidth - 16)
  }

  /** The charts are rebuilt when the set of backends changes, and only fed new data otherwise. */
  function drawCharts() {
    const ids = [...series.keys()]
    const container = $('charts')
    if (ids.join('\n') !== chartIds) {
      chartIds = ids.join('\n')
      for (const u of charts.values()) u.destroy()
      charts.clear()
      container.replaceChildren()
      // Every box is in the grid before any is measured: the first alone would take the whole row.
      const boxes = CHARTS.map((c) => el('div', { class: 'chart', data: { chart: c.key } }))
      container.append(...boxes)
      CHARTS.forEach((c, i) => {
        const box = boxes[i]
        const opts = {
          title: c.title,
          width: chartWidth(box),
          height: 220,
          // At least the last minute is shown, so the first samples do not stretch over the whole width.
          scales: {
            x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] },
            y: { range: (u, min, max) => [0, Math.max(c.floor, (max ?? 0) * 1.1)] },
          },
          series: [{}, ...ids.map((id) => ({
            label: series.get(id).label,
            stroke: colorOf(id),
            width: 1.5,
            value: (u, v) => (v == null ? '-' : c.fmt(v)),
            ...(c.stepped ? { paths: uPlot.paths.stepped({ align: 1 }) } : {}),
          }))],
          axes: [{}, { size: 64, values: (u, vals) => vals.map((v) => (c.key === 'restarts' ? (Number.isInteger(v) ? String(v) : '') : String(+v.toFixed(2)))) }],
          legend: { live: true },
          cursor: { drag: { x: false, y: false } },
        }
        charts.set(c.key, new uPlot(opts, data(c.key, ids), box))
      })
    } else {
      for (const c of CHARTS) charts.get(c.key).setData(data(c.key, ids))
    }
    if (ids.length === 0) container.replaceChildren(el('div', { class: 'chart empty' }, 'No running backend to chart yet.'))
  }

  function data(key, ids) {
    return [times.slice(), ...ids.map((id) => series.get(id).values[key].slice())]
  }

  function actionButtons(b) {
    const out = []
    for (const action of b.actions || []) {
      const text = action === 'stop' ? 'Stop' : action === 'restart' ? 'Restart' : 'Start'
      out.push(el('button', { class: action === 'stop' ? 'danger' : '', type: 'button', data: { id: b.id, action }, on: () => ask(b, action) }, text))
    }
    return out
  }

  function rowOf(b, replica, index) {
    const name = replica ? `replica #${index + 1}` : b.name + (b.replicas && b.replicas.length ? ` ×${b.replicas.length}` : '')
    const swatch = replica || !series.has(b.key || b.id) ? null : el('span', { class: 'swatch', 'aria-hidden': 'true' })
    if (swatch) swatch.style.background = colorOf(b.key || b.id)
    return el('tr', { class: replica ? 'replica' : 'backend', data: { id: b.id } },
      el('td', { class: 'name', title: b.file || b.name }, swatch, name),
      el('td', { class: `state-${b.state}` }, b.state),
      el('td', { class: 'num' }, b.pid == null ? '-' : String(b.pid)),
      el('td', { class: 'num' }, b.port == null ? '-' : String(b.port)),
      el('td', { class: 'num' }, duration(b.uptimeMs)),
      el('td', { class: 'num' }, b.cpuPercent == null ? '-' : `${b.cpuPercent.toFixed(1)}%`),
      el('td', { class: 'num' }, bytes(b.memoryBytes)),
      el('td', { class: 'num' }, b.processCount == null ? '-' : String(b.processCount)),
      el('td', { class: 'num' }, b.restarts == null ? '-' : String(b.restarts)),
      el('td', {}, health(b)),
      el('td', {}, ...actionButtons(b)))
  }

  /** Under a backend: where its log file is and, when it failed, the last lines of its stderr. */
  function detailsOf(b) {
    const tail = b.stderrTail || []
    if (!b.logFile && tail.length === 0) return null
    return el('tr', { class: 'details' }, el('td', { colspan: '11' },
      b.logFile ? el('div', {}, 'log: ', el('span', { class: 'log-file' }, b.logFile)) : null,
      tail.length ? el('pre', { class: 'stderr', title: 'the last lines of its stderr' }, tail.join('\n')) : null))
  }

  function drawTable(sample) {
    const tbody = $('rows')
    const rows = []
    const grouped = sample.backends.some((b) => b.group)
    let group
    for (const b of sample.backends) {
      if (grouped && b.group !== group) {
        group = b.group
        rows.push(el('tr', { class: 'group' }, el('td', { colspan: '11' }, group ? `group ${group}` : 'not in a group')))
      }
      rows.push(rowOf(b, false))
      ;(b.replicas || []).forEach((r, i) => rows.push(rowOf(r, true, i)))
      const details = detailsOf(b)
      if (details) rows.push(details)
    }
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: '11', class: 'empty' }, 'No backends.')))
    tbody.replaceChildren(...rows)
  }

  function notice(text, error) {
    const n = $('notice')
    n.textContent = text
    n.className = error ? 'error' : ''
  }

  function ask(b, action) {
    pending = { id: b.id, action }
    const what = `${b.name}${b.pid ? ` (pid ${b.pid}${b.port ? `, port ${b.port}` : ''})` : ''}`
    const verb = action === 'stop' ? 'Stop' : action === 'restart' ? 'Restart' : 'Start'
    $('confirm-text').textContent = `${verb} ${what}?${action === 'stop' && body.note ? ` ${body.note}` : ''}`
    $('confirm-yes').textContent = verb
    $('confirm').hidden = false
    $('confirm-yes').focus()
  }

  async function confirmed() {
    const job = pending
    pending = null
    $('confirm').hidden = true
    if (!job) return
    notice(`${job.action}…`)
    try {
      const res = await fetch(withToken('/action'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(job), cache: 'no-store' })
      const result = await res.json().catch(() => ({}))
      if (!res.ok || result.ok === false) throw new Error(result.error || result.detail || `HTTP ${res.status}`)
      notice(result.message || `${job.action}: done`)
    } catch (err) {
      notice(`${job.action} failed: ${err.message}`, true)
    }
  }

  $('confirm-yes').addEventListener('click', confirmed)
  $('confirm-no').addEventListener('click', () => {
    pending = null
    $('confirm').hidden = true
  })
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !$('confirm').hidden) $('confirm-no').click()
  })

  function onSample(sample, fresh = true) {
    latest = sample
    if (fresh) add(sample)
    drawTable(sample)
    drawCharts()
    const conn = $('conn')
    conn.textContent = sample.error ? `sampling failed: ${sample.error}` : `updated ${new Date(sample.at).toLocaleTimeString()}`
    conn.className = sample.error ? 'conn lost' : 'conn'
  }

  const events = new EventSource(withToken('/events'))
  events.addEventListener('hello', (e) => {
    const hello = JSON.parse(e.data)
    times.length = 0
    series.clear()
    for (const s of hello.history) add(s)
    if (hello.latest) onSample(hello.latest, false)
  })
  events.addEventListener('message', (e) => onSample(JSON.parse(e.data)))
  events.addEventListener('error', () => {
    const conn = $('conn')
    conn.textContent = events.readyState === EventSource.CLOSED ? 'disconnected: the dashboard has stopped' : 'reconnecting…'
    conn.className = 'conn lost'
  })
  window.addEventListener('resize', () => {
    for (const [key, u] of charts) {
      const box = document.querySelector(`[data-chart="${key}"]`)
      if (box) u.setSize({ width: chartWidth(box), height: 220 })
    }
  })
  // For tests and the curious: what the charts hold, per chart and backend key.
  window.dashboard = Object.freeze({
    values: (chart, key) => (series.get(key) ? series.get(key).values[chart].slice() : null),
    ids: () => [...series.keys()],
    latest: () => latest,
  })
}

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c])
const hash = (text) => `'sha256-${crypto.createHash('sha256').update(text, 'utf8').digest('base64')}'`

/** `{ html, csp }` of the page for a data source (`title`, `note` on what a stop means). */
function buildPage({ title, subtitle = '', note = '' }) {
  const lib = uplot()
  const style = `${lib.css}\n${STYLE}`
  const script = `(${client.toString()})(${formatDuration.toString()}, ${formatBytes.toString()})`
  const libScript = lib.js
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<style>${style}</style>
</head>
<body data-note="${escapeHtml(note)}">
<header><h1>${escapeHtml(title)}</h1><span class="sub">${escapeHtml(subtitle)}</span><span id="conn" class="conn">connecting…</span></header>
<main>
<p class="note">CPU: percent of one core, sampled every second. Memory: resident memory of the backend's whole process tree.${note ? ` ${escapeHtml(note)}` : ''}</p>
<table>
<thead><tr><th>Backend</th><th>State</th><th class="num">PID</th><th class="num">Port</th><th class="num">Uptime</th><th class="num">CPU</th><th class="num">Memory</th><th class="num">Procs</th><th class="num">Restarts</th><th>Health</th><th></th></tr></thead>
<tbody id="rows"><tr><td colspan="11" class="empty">Waiting for the first sample…</td></tr></tbody>
</table>
<p id="notice" role="status"></p>
<div id="charts" class="charts"></div>
</main>
<div id="confirm" role="dialog" aria-modal="true" hidden><div class="box"><p id="confirm-text"></p><div class="buttons"><button type="button" id="confirm-no">Cancel</button><button type="button" id="confirm-yes" class="danger">Confirm</button></div></div></div>
<script>${libScript}</script>
<script>${script}</script>
</body>
</html>
`
  const csp = [
    "default-src 'none'",
    `script-src ${hash(libScript)} ${hash(script)}`,
    `style-src ${hash(style)}`,
    'img-src data:',
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ')
  return { html, csp, uplotVersion: lib.version }
}

module.exports = { buildPage }
