'use strict'
// npm run bench: every area side by side with its peers, in one run on this machine. Prints one table per
// area (median, p95, ratio to ours, correctness), and writes bench/RESULTS.md, bench/chart.svg and
// bench/results/latest.json. Usage: node bench/run.js [area…] [--quick] (areas named: re-run into today's report)
const fs = require('node:fs')
const path = require('node:path')
const { machine, fmt, isOurs } = require('./lib')

const AREAS = ['ports', 'readiness', 'signals', 'logs', 'stopping', 'status', 'supervision', 'monitoring', 'replicas', 'footprint']
const args = process.argv.slice(2)
const quick = args.includes('--quick')
const chosen = args.filter((a) => !a.startsWith('--'))
const RUNS = { ports: quick ? 50 : 200, readiness: quick ? 10 : 30, signals: quick ? 20 : 100, logs: quick ? 1 : 5, stopping: quick ? 5 : 15, status: quick ? 20 : 60, supervision: quick ? 10 : 30, monitoring: quick ? 4 : 10, replicas: quick ? 3 : 5, footprint: quick ? 10 : 20 }

/**
 * The reference of a row: the row of its group marked `reference`, else the group's first row of ours. Each
 * row gets `ratio` (its median over the reference's) and, for every extra column with `ratio`, `<key>Ratio`.
 */
function withRatios(result) {
  const groupOf = (r) => r.group ?? 'all'
  for (const row of result.rows) {
    const same = result.rows.filter((r) => groupOf(r) === groupOf(row))
    const ref = same.find((r) => r.reference) ?? same.find((r) => isOurs(r.name))
    row.isReference = row === ref
    row.ratio = ref ? row.median / ref.median : NaN
    for (const c of result.columns ?? []) if (c.ratio) row[`${c.key}Ratio`] = ref ? row[c.key] / ref[c.key] : NaN
  }
  return result
}

const ratioText = (r, v) => (r.isReference ? '1' : Number.isFinite(v) ? v.toFixed(1) : '-')

/** Header and cells of the extra columns an area declares (`result.columns`: { key, label, ratio? }). */
function extraColumns(result) {
  const cols = []
  for (const c of result.columns ?? []) {
    cols.push({ head: c.label, md: c.label, cell: (r) => fmt(r[c.key]) })
    if (c.ratio) {
      const cell = (r) => ratioText(r, r[`${c.key}Ratio`])
      cols.push({ head: `${c.label} × ours`, md: `${c.label} vs ours`, cell, mdCell: (r) => (cell(r) === '-' ? '-' : `${cell(r)}×`) })
    }
  }
  return cols
}

function tableText(result) {
  const extra = extraColumns(result)
  const head = ['contender', 'median', 'p95', '× ours', ...extra.map((c) => c.head), 'correct']
  const rows = result.rows.map((r) => [r.name, fmt(r.median), fmt(r.p95), ratioText(r, r.ratio), ...extra.map((c) => c.cell(r)), r.correct ? 'yes' : 'NO'])
  const last = head.length - 1
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (r) => r.map((c, i) => (i === 0 || i === last ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')
  return [line(head), ...rows.map(line)].join('\n')
}

function markdownTable(result) {
  const extra = extraColumns(result)
  // Areas measured in something else than time (req/s: higher is better) name their unit instead.
  const [unit, vs] = result.higherIsBetter ? [result.unit.split(',')[0], 'vs ours'] : ['ms', 'time vs ours']
  const out = [
    `| contender | median (${unit}) | p95 (${unit}) | ${vs} | ${extra.map((c) => `${c.md} | `).join('')}correct |`,
    `| --- | ---: | ---: | ---: | ${extra.map(() => '---: | ').join('')}--- |`,
  ]
  for (const r of result.rows) {
    const ratio = ratioText(r, r.ratio)
    out.push(`| ${r.name} | ${fmt(r.median)} | ${fmt(r.p95)} | ${ratio === '-' ? ratio : `${ratio}×`} | ${extra.map((c) => `${(c.mdCell ?? c.cell)(r)} | `).join('')}${r.correct ? 'yes' : `**no**${r.note ? `: ${r.note}` : ''}`} |`)
  }
  return out.join('\n')
}

function escapeXml(s) {
  return s.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c])
}

/** Horizontal bars of the median per contender, one panel per area, log scale. */
function chart(results) {
  // The chart is of times (shorter is better): areas measured otherwise are left to their tables.
  const panels = results.filter((r) => r.rows.length > 0 && !r.higherIsBetter)
  const width = 900
  const barH = 18
  const labelW = 430
  let y = 40
  const parts = [`<text x="10" y="24" font-size="16" font-weight="bold">backend-process-manager vs peers — median time, log scale (shorter is better)</text>`]
  const all = panels.flatMap((p) => p.rows.map((r) => r.median)).filter((v) => v > 0)
  const lo = Math.log10(Math.min(...all) / 2)
  const hi = Math.log10(Math.max(...all) * 2)
  const scale = (v) => ((Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * (width - labelW - 90)
  for (const p of panels) {
    y += 10
    parts.push(`<text x="10" y="${y + 12}" font-size="13" font-weight="bold">${escapeXml(p.title)}</text>`)
    y += 20
    for (const r of p.rows) {
      const w = Math.max(2, scale(r.median))
      const color = isOurs(r.name) ? '#2b8a3e' : r.correct ? '#868e96' : '#e03131'
      parts.push(`<text x="10" y="${y + 13}" font-size="12">${escapeXml(r.name.slice(0, 62))}</text>`)
      parts.push(`<rect x="${labelW}" y="${y + 2}" width="${w.toFixed(1)}" height="${barH - 4}" fill="${color}"/>`)
      const tag = `${fmt(r.median)} ms${r.isReference ? '' : ` (${r.ratio.toFixed(1)}×)`}${r.correct ? '' : ' wrong'}`
      parts.push(`<text x="${labelW + w + 6}" y="${y + 13}" font-size="12">${escapeXml(tag)}</text>`)
      y += barH
    }
  }
  y += 16
  parts.push(`<text x="10" y="${y}" font-size="11" fill="#495057">green: backend-process-manager · grey: peer · red: peer with wrong answers or processes left alive</text>`)
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 10}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${parts.join('')}</svg>\n`
}

async function main() {
  const info = machine()
  const date = new Date().toISOString().slice(0, 10)
  console.log(`Machine: ${info.cpu}, ${info.cores} cores, ${info.memoryGiB} GiB, ${info.os}, Node ${info.node} — ${date}${quick ? ' (quick)' : ''}\n`)
  let results = []
  for (const area of chosen.length ? chosen : AREAS) {
    if (!AREAS.includes(area)) throw new Error(`unknown area ${area}; areas: ${AREAS.join(', ')}`)
    let result
    try {
      result = withRatios(await require(`./${area}.js`)({ runs: RUNS[area], quick }))
    } catch (err) {
      // One area failing (a start timing out on a loaded machine) does not lose the others' results.
      console.error(err)
      process.exitCode = 1
      result = { title: `${area}: failed`, rows: [], figures: { error: String(err.message).split('\n')[0] } }
    }
    result.area = area
    results.push(result)
    console.log(`${result.title}${result.unit ? ` (${result.unit})` : ''}`)
    if (result.rows.length) console.log(tableText(result))
    for (const r of result.rows) if (r.note) console.log(`  ${r.name}: ${r.note}`)
    if (result.figures) for (const [k, v] of Object.entries(result.figures)) console.log(`  ${k}: ${typeof v === 'number' ? v.toFixed(2) : v}`)
    console.log()
  }
  const latest = path.join(__dirname, 'results', 'latest.json')
  if (chosen.length) {
    // A partial full run replaces its areas in the last full report (same machine, same day); a quick one
    // never touches the report.
    if (quick || !fs.existsSync(latest)) return
    const previous = JSON.parse(fs.readFileSync(latest, 'utf8'))
    if (previous.date !== date) return
    results = previous.results.map((r) => results.find((n) => n.area === r.area) ?? r)
    console.log(`re-ran ${chosen.join(', ')}; the other areas are from the earlier run today`)
  }
  const md = [
    `# Benchmark results`,
    ``,
    `${date}, ${info.cpu}, ${info.cores} cores, ${info.memoryGiB} GiB, ${info.os}, Node ${info.node}. Written by \`npm run bench\`; every`,
    `contender measured in the same run. "time vs ours" is the contender's median divided by ours (higher: we are faster);`,
    `"cpu ms vs ours" likewise for the CPU time spent (higher: we use less).`,
    ``,
    ...results.flatMap((r) => [
      `## ${r.title}`,
      ``,
      ...(r.rows.length ? [markdownTable(r), ''] : []),
      ...r.rows.filter((x) => x.note).map((x) => `- ${x.name}: ${x.note}`),
      ...(r.figures ? Object.entries(r.figures).map(([k, v]) => `- ${k}: ${typeof v === 'number' ? v.toFixed(2) : v}`) : []),
      ``,
    ]),
  ].join('\n')
  fs.writeFileSync(path.join(__dirname, 'RESULTS.md'), md)
  fs.writeFileSync(path.join(__dirname, 'chart.svg'), chart(results))
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true })
  fs.writeFileSync(latest, JSON.stringify({ date, machine: info, results }, null, 2))
  console.log('wrote bench/RESULTS.md, bench/chart.svg, bench/results/latest.json')
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err)
    process.exitCode = 1
  })
}
module.exports = { withRatios, markdownTable }
