import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'

function captureLines(): { write(t: string): void; lines: string[] } {
  const lines: string[] = []
  return { write: (t: string) => void lines.push(t), lines }
}

// One object per level whose every field is the level below: not circular (the depth cut and
// the circular check both pass it), yet written out it is width^depth values.
function sharedGraph(width: number, depth: number, leaf: unknown): unknown {
  let node: unknown = leaf
  for (let level = 0; level < depth; level++) {
    const next: Record<string, unknown> = {}
    for (let i = 0; i < width; i++) next[`k${i}`] = node
    node = next
  }
  return node
}

describe('createJsonLogger: the size of one line is bounded', () => {
  it('writes a graph of shared references cut short, marked, and still valid JSON', () => {
    const out = captureLines()
    const log = createJsonLogger({ output: out })
    // 6^7 = 279,936 leaves: about 4 MB of JSON written out in full.
    log.info('graph', { graph: sharedGraph(6, 7, 'leaf'), after: 'kept' })
    expect(out.lines).toHaveLength(1)
    const line = out.lines[0]!
    expect(line.length).toBeLessThan(1_100_000)
    expect(line).toContain('[truncated]')
    const parsed = JSON.parse(line) as Record<string, unknown>
    expect(parsed.msg).toBe('graph')
  })

  it('bounds a Map and a wide object the same way', () => {
    const out = captureLines()
    const log = createJsonLogger({ output: out })
    const wide = new Map<string, unknown>()
    for (let i = 0; i < 200_000; i++) wide.set(`key${i}`, i)
    const object = Object.fromEntries([...wide].map(([k, v]) => [k, String(v)]))
    log.info('wide', { wide, object })
    const line = out.lines[0]!
    expect(line.length).toBeLessThan(1_100_000)
    const parsed = JSON.parse(line) as {
      wide: Record<string, unknown>
      object: Record<string, unknown>
    }
    expect(parsed.wide.key0).toBe(0)
    expect(JSON.stringify(parsed)).toContain('[truncated]')
  })

  it('bounds the text of many long strings', () => {
    const out = captureLines()
    const log = createJsonLogger({ output: out })
    // 1,000 strings of 8,000 characters (each under the per-string cut): 8 MB in full.
    const texts = Array.from({ length: 1_000 }, (_, i) => `${i}`.padEnd(8_000, 'x'))
    const grouped = Object.fromEntries(
      Array.from({ length: 10 }, (_, g) => [`g${g}`, texts.slice(g * 100, g * 100 + 100)]),
    )
    log.info('texts', grouped)
    const line = out.lines[0]!
    expect(line.length).toBeLessThan(1_100_000)
    expect(line).toContain('[truncated]')
  })

  it('writes an ordinary line whole', () => {
    const out = captureLines()
    const log = createJsonLogger({ output: out })
    const items = Array.from({ length: 100 }, (_, i) => ({ id: i, name: `item ${i}` }))
    log.info('ordinary', { items, nested: { a: { b: { c: 1 } } } })
    const line = out.lines[0]!
    expect(line).not.toContain('[truncated]')
    expect((JSON.parse(line) as { items: unknown[] }).items).toHaveLength(100)
  })

  it('cuts a long field name or Map key short, as a string value is cut', () => {
    // A name is written too: a 5 MB key (a Map keyed by request bodies, an object built from
    // input) made a 5 MB line, past the 1 MiB bound and any shipper's line limit.
    const out = captureLines()
    const log = createJsonLogger({ output: out })
    const long = 'k'.repeat(5_000_000)
    log.info('object', { [long]: 1 })
    log.info('map', { map: new Map([[long, 1]]) })
    log.child({ [long]: 1 }).info('child')
    expect(out.lines).toHaveLength(3)
    for (const line of out.lines) {
      expect(line.length).toBeLessThan(10_000)
      expect(line).toContain(`"${'k'.repeat(8_192)}…"`)
      JSON.parse(line)
    }
  })

  it('cuts a long URL short, as a string value is cut', () => {
    // A data: URL holds its whole payload in its href.
    const out = captureLines()
    const log = createJsonLogger({ output: out })
    log.info('url', { url: new URL(`data:text/plain,${'a'.repeat(5_000_000)}`) })
    expect(out.lines[0]!.length).toBeLessThan(10_000)
    expect(JSON.parse(out.lines[0]!).url).toBe(`data:text/plain,${'a'.repeat(8_176)}…`)
  })
})
