// Model-based test of route switches, rollbacks and reloads: whatever the order, a route's
// effective targets are its live override if one is set, else the targets of the config in
// force; a valid reload keeps a route's override when the route's configured targets stayed
// the same (every service stays configured here) and drops it otherwise, an invalid one
// changes nothing.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import type { RouteTargetConfig } from '../../../src/proxy/contracts.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'

const services = ['a', 'b', 'c'] as const
const routes = ['r1', 'r2'] as const
type Targets = RouteTargetConfig[]

interface Model {
  configured: Record<string, Targets>
  overrides: Record<string, Targets | undefined>
}

function yaml(configured: Record<string, Targets>): string {
  const route = (name: string, prefix: string) =>
    `      - name: ${name}\n        match: { prefix: ${prefix} }\n        targets: ${JSON.stringify(configured[name])}\n`
  return `services:
${services.map((s) => `  ${s}: { endpoints: [http://127.0.0.1:9] }`).join('\n')}
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
${route('r1', '/one')}${route('r2', '/two')}`
}

const targetsArb: fc.Arbitrary<Targets> = fc
  .uniqueArray(fc.constantFrom(...services), { minLength: 1, maxLength: 3 })
  .chain((names) =>
    fc
      .tuple(...names.map(() => fc.integer({ min: 1, max: 9 })))
      .map((weights) => names.map((service, i) => ({ service, weight: weights[i] as number }))),
  )

class Switch implements fc.AsyncCommand<Model, ProxyInternals> {
  constructor(
    readonly route: string,
    readonly targets: Targets,
  ) {}
  check = () => true
  async run(model: Model, proxy: ProxyInternals) {
    proxy.switchRoute(this.route, this.targets)
    model.overrides[this.route] = this.targets
    assertMatches(model, proxy)
  }
  toString = () => `switch(${this.route}, ${JSON.stringify(this.targets)})`
}

class Reset implements fc.AsyncCommand<Model, ProxyInternals> {
  constructor(readonly route: string) {}
  check = () => true
  async run(model: Model, proxy: ProxyInternals) {
    proxy.resetRoute(this.route)
    model.overrides[this.route] = undefined
    assertMatches(model, proxy)
  }
  toString = () => `reset(${this.route})`
}

class Reload implements fc.AsyncCommand<Model, ProxyInternals> {
  constructor(
    readonly r1: Targets,
    readonly r2: Targets,
    /** Per route: write its configured targets again (reversed) instead of r1 / r2. */
    readonly same: readonly [boolean, boolean],
    readonly valid: boolean,
  ) {}
  check = () => true
  async run(model: Model, proxy: ProxyInternals) {
    const again = (route: string, targets: Targets): Targets =>
      this.same[route === 'r1' ? 0 : 1]
        ? [...(model.configured[route] as Targets)].reverse()
        : targets
    const next = { r1: again('r1', this.r1), r2: again('r2', this.r2) }
    const text = this.valid ? yaml(next) : yaml(next).replace('service":"', 'service":"ghost-')
    const error = await proxy.tryReload(text)
    if (this.valid) {
      expect(error).toBeUndefined()
      for (const route of routes)
        if (!sameTargets(model.configured[route] as Targets, next[route]))
          model.overrides[route] = undefined
      model.configured = next
    } else {
      expect(error?.code).toBe('CONFIG_INVALID')
    }
    assertMatches(model, proxy)
  }
  toString = () =>
    `reload(${this.valid ? 'valid' : 'invalid'}, ${JSON.stringify([this.r1, this.r2, this.same])})`
}

// The same services with the same weights, in any order.
function sameTargets(a: Targets, b: Targets): boolean {
  return (
    a.length === b.length &&
    a.every((t) => b.some((u) => u.service === t.service && u.weight === t.weight))
  )
}

function assertMatches(model: Model, proxy: ProxyInternals): void {
  for (const state of proxy.routes()) {
    const override = model.overrides[state.name]
    expect(state.overridden, state.name).toBe(override !== undefined)
    expect(state.targets, state.name).toEqual(override ?? model.configured[state.name])
  }
}

describe('route overrides and reloads (model-based)', () => {
  it('always expose the override, else the configured targets', async () => {
    const quiet = createJsonLogger({ level: 'silent' })
    await fc.assert(
      fc.asyncProperty(
        fc.commands(
          [
            fc.tuple(fc.constantFrom(...routes), targetsArb).map(([r, t]) => new Switch(r, t)),
            fc.constantFrom(...routes).map((r) => new Reset(r)),
            fc
              .tuple(targetsArb, targetsArb, fc.boolean(), fc.boolean(), fc.boolean())
              .map(([a, b, same1, same2, v]) => new Reload(a, b, [same1, same2], v)),
          ],
          { size: 'max', maxCommands: 12 },
        ),
        async (commands) => {
          const configured = {
            r1: [{ service: 'a', weight: 1 }],
            r2: [{ service: 'b', weight: 1 }],
          }
          const proxy = await startProxyRuntime({ config: yaml(configured), logger: quiet })
          try {
            await fc.asyncModelRun(
              () => ({ model: { configured, overrides: {} }, real: proxy }),
              commands,
            )
          } finally {
            await proxy.close(0)
          }
        },
      ),
      { numRuns: 40 },
    )
  })
})
