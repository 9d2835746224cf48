import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { proxyConfigJsonSchema } from '../../../src/proxy/config/index.js'

describe('docs/proxy-config.schema.json', () => {
  it('equals the schema generated from the zod schema (run `npx tsx scripts/proxy-schema.ts`)', () => {
    const shipped = JSON.parse(
      readFileSync(new URL('../../../docs/proxy-config.schema.json', import.meta.url), 'utf8'),
    ) as unknown
    expect(shipped).toEqual(proxyConfigJsonSchema())
  })

  it('describes the top-level keys and forbids unknown ones', () => {
    const schema = proxyConfigJsonSchema() as {
      properties: Record<string, unknown>
      required: string[]
      additionalProperties: boolean
    }
    expect(Object.keys(schema.properties).sort()).toEqual([
      'accessLog',
      'admin',
      'deadlineHeader',
      'drainTimeoutMs',
      'idempotency',
      'listeners',
      'services',
      'startTimeoutMs',
      'via',
      'workers',
    ])
    expect(schema.required.sort()).toEqual(['listeners', 'services'])
    expect(schema.additionalProperties).toBe(false)
  })
})
