import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/index.js'
import { createMetricsRegistry } from '../../src/observability/index.js'

// `# HELP` has escapes for backslash and line feed only: any other character that ends a line
// for some scraper (CR, VT, FF, NEL, U+2028/9), another control character or a lone surrogate
// (not UTF-8) would break or corrupt the scrape, so help text holding one is refused when the
// metric is made, naming the character, rather than written out.
describe('metric help text', () => {
  const bad: Array<[string, string]> = [
    ['a\rb', 'U+000D'],
    ['a\u000bb', 'U+000B'],
    ['a\u0000b', 'U+0000'],
    ['a\u0085b', 'U+0085'],
    ['a\u2028b', 'U+2028'],
    ['a\u007fb', 'U+007F'],
    ['a\ud800b', 'U+D800'],
  ]
  it.each(bad)('refuses %j, naming %s', async (help, code) => {
    const registry = createMetricsRegistry()
    const make = () => registry.gauge({ name: 'g', help })
    expect(make).toThrow(InvalidOptionError)
    expect(make).toThrow(code)
    expect(await registry.render()).toBe('')
  })

  it('takes tabs, line feeds (escaped), backslashes and paired surrogates', async () => {
    const registry = createMetricsRegistry()
    registry.counter({ name: 'c_total', help: 'a\tb\nc\\d \ud83d\ude00' }).inc()
    expect(await registry.render()).toContain('# HELP c_total a\tb\\nc\\\\d \ud83d\ude00\n')
  })
})
