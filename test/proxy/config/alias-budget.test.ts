// yaml's default alias budget (maxAliasCount 100) refused a config whose one block of shared
// settings was merged (`<<: *defaults`) into a hundred services or more, though real configs
// have a few hundred. The budget is raised to 1000; a document whose aliases multiply (a
// "billion laughs") is still refused, as a config problem that says so, and quickly.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const listeners = 'listeners: [{ name: out, role: ambassador, port: 15001 }]\n'

function services(count: number, defaults: string): string {
  let text = `${defaults}services:\n`
  for (let i = 0; i < count; i++)
    text += `  s${i}: { <<: *defaults, endpoints: [http://10.0.0.1:${3000 + i}] }\n`
  return text + listeners
}

describe('the alias budget of the config loader', () => {
  it('takes one block of defaults merged into 300 services', () => {
    const config = parseProxyConfig(
      services(300, 'x-defaults: &defaults\n  retry: { attempts: 5 }\n'),
      'test.yaml',
    )
    expect(config.services.size).toBe(300)
    expect(config.services.get('s299')?.retry?.attempts).toBe(5)
  })

  it('takes defaults that hold an alias themselves, merged into 300 services', () => {
    // Each use of `defaults` counts twice: once for it, once for the `slow` inside it.
    const config = parseProxyConfig(
      services(
        300,
        'x-slow: &slow { connectMs: 500, readMs: 20000, overallMs: 60000 }\n' +
          'x-defaults: &defaults\n  timeouts: *slow\n',
      ),
      'test.yaml',
    )
    expect(config.services.get('s299')?.timeouts.readMs).toBe(20000)
  })

  it('refuses a document whose aliases multiply ("billion laughs"), saying why', () => {
    // Nine lists of nine aliases of the list before: 9^9 (387 million) "lol"s written out.
    let laughs = 'x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n'
    for (let i = 1; i <= 9; i++)
      laughs += `x-a${i}: &a${i} [${Array(9)
        .fill(`*a${i - 1}`)
        .join(', ')}]\n`
    const started = performance.now()
    const message = problemsOf(
      `services:\n  app: { endpoints: [http://127.0.0.1:3000] }\n${listeners}${laughs}`,
    )
    expect(performance.now() - started).toBeLessThan(5_000)
    expect(message).toContain('(1 problem)')
    expect(message).toContain('(yaml): expected a document whose aliases expand at most 1000 times')
    expect(message).toContain('"billion laughs"')
  })

  it('refuses one block of defaults merged more than 1000 times', () => {
    const message = problemsOf(services(1000, 'x-defaults: &defaults\n  retry: { attempts: 5 }\n'))
    expect(message).toContain('expected a document whose aliases expand at most 1000 times')
  })
})
