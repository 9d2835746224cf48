// A bad value is reported once, at its own key: not twice (two schema checks failing on one
// number), nor echoed by a cross-field rule that reads the bad value as another one.

import { describe, expect, it } from 'vitest'
import { problemsOf } from './problems.js'

const config = (service: string, weight: string): string => `
services:
  orders:
    endpoints: [http://127.0.0.1:3001]
${service}
listeners:
  - name: inbound
    role: gateway
    port: 8080
    routes:
      - name: r
        match: { prefix: /orders }
        targets: [{ service: orders, weight: ${weight} }]
`

describe('config problems, one per fault', () => {
  it('reports a duration past the largest timer once', () => {
    const message = problemsOf(config('    timeouts: { connectMs: 1e30 }', '100'))
    expect(message).toContain('(1 problem)')
    expect(message).toContain(
      'services.orders.timeouts.connectMs: expected integer in [1, 2147483647]',
    )
  })

  it.each(['-5', '"50"', '.nan'])(
    'names a bad target weight %s, and no "all weights 0"',
    (weight) => {
      const message = problemsOf(config('', weight))
      expect(message).toContain('(1 problem)')
      expect(message).toContain(
        'listeners[0].routes[0].targets[0].weight: expected number in [0, 1000000]',
      )
      expect(message).not.toContain('all weights 0')
    },
  )

  it('still refuses a route whose weights are all 0', () => {
    expect(problemsOf(config('', '0'))).toContain(
      'listeners[0].routes[0].targets: expected at least one target with weight > 0',
    )
  })
})
