// A label value holding a line break other than the line feed (which the format escapes as
// `\n`) or any other control character must not end an exposition line: scrapers split the text
// on more than `\n` (Python's `str.splitlines` on CR, VT, FF, U+001C to U+001E, U+0085,
// U+2028 and U+2029), so each is written as a mark that keeps every sample on one line.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { createMetricsRegistry, escapeLabelValue } from '../../src/observability/index.js'
import { parsePrometheusText } from './prometheus-text.js'

// Every character any common line splitter takes as the end of a line.
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
const lineBreak = /\r\n|[\n\r\v\f\u001c-\u001e\u0085\u2028\u2029]/

// Reads a rendered label value back, as escapeLabelValue documents it: U+FFFD then the four
// upper-case hex digits of a marked character is that character.
function unmark(text: string): string {
  return text.replace(
    /\uFFFD(D[89A-F][0-9A-F]{2}|FFFD|00[01][0-9A-F]|007F|008[0-9A-F]|009[0-9A-F]|202[89])/g,
    (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)),
  )
}

describe('metrics registry: label values holding line breaks and control characters', () => {
  it('keeps every sample on one line, whatever splitter reads it', async () => {
    const registry = createMetricsRegistry()
    const hits = registry.counter({ name: 'hits_total', help: 'h', labelNames: ['path'] })
    const values = [
      '/a\rb',
      '/a\r\nb',
      '/a\u2028b',
      '/a\u2029b',
      '/a\u0085b',
      '/a\vb\fc',
      '/\u001c\u001d\u001e',
    ]
    values.forEach((path, i) => {
      hits.inc({ path }, i + 1)
    })
    const text = await registry.render()
    const lines = text.split(lineBreak)
    expect(lines.pop()).toBe('')
    // # HELP, # TYPE, then one line per series.
    expect(lines).toHaveLength(2 + values.length)
    lines.slice(2).forEach((line, i) => {
      expect(line).toMatch(new RegExp(`^hits_total\\{path=".*"\\} ${i + 1}$`))
    })
    const samples = parsePrometheusText(text).get('hits_total')!.samples
    expect(samples.map((s) => unmark(s.labels.path!))).toEqual(values)
    expect(escapeLabelValue('a\rb')).toBe('a\uFFFD000Db')
    expect(escapeLabelValue('a\u2028b\n')).toBe('a\uFFFD2028b\\n')
  })

  it('marks every other control character too, and tells a U+FFFD before such a code apart', () => {
    expect(escapeLabelValue('\u0000\t\u001b\u007f\u009f')).toBe(
      '\uFFFD0000\uFFFD0009\uFFFD001B\uFFFD007F\uFFFD009F',
    )
    expect(escapeLabelValue('\uFFFD000D')).toBe('\uFFFDFFFD000D')
    expect(escapeLabelValue('\uFFFD2028')).toBe('\uFFFDFFFD2028')
    // Text that cannot be read as a mark is left as it is.
    expect(escapeLabelValue('\uFFFD0041 \uFFFD000d')).toBe('\uFFFD0041 \uFFFD000d')
  })

  it('renders distinct values as distinct one-line values that read back (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(
          fc.string({
            unit: fc.constantFrom(
              '\r',
              '\u2028',
              '\u0085',
              '\u0000',
              '\uFFFD',
              '000D',
              '2028',
              '\uD800',
              '\n',
              'x',
            ),
            maxLength: 4,
          }),
          { maxLength: 12 },
        ),
        async (values) => {
          const registry = createMetricsRegistry()
          const g = registry.gauge({ name: 'prop', help: 'p', labelNames: ['v'] })
          values.forEach((v, i) => {
            g.set({ v }, i)
          })
          const text = await registry.render()
          expect(text.split(lineBreak)).toHaveLength(values.length + 3)
          const samples = parsePrometheusText(text).get('prop')?.samples ?? []
          expect(samples.map((s) => unmark(s.labels.v!))).toEqual(values)
        },
      ),
      { numRuns: 300 },
    )
  })
})
