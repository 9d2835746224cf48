import { z } from 'zod'
import { proxyConfigSchema } from './schema.js'

/**
 * The JSON Schema (draft 2020-12) of the proxy config YAML, generated from the zod schema, for
 * editors (`# yaml-language-server: $schema=...`). Cross-field rules (targets name defined
 * services, unique ports, ...) are not expressible in it; the loader checks them. Single-field
 * rules a keyword can state (patterns, bounds) are in it through the zod schemas' `.meta()`;
 * docs/proxy.md lists what it leaves to the loader. It compiles in Ajv's strict mode.
 * docs/proxy-config.schema.json is this value; a test keeps the two equal.
 */
export function proxyConfigJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(proxyConfigSchema, {
    io: 'input',
    target: 'draft-2020-12',
    unrepresentable: 'any',
    // zod writes `startsWith` as `format: "starts_with"` beside its `pattern`; that is no JSON
    // Schema format, and Ajv's strict mode refuses to compile a schema naming an unknown one.
    // The pattern says the same, so only the format is dropped.
    override: (ctx) => {
      if (ctx.jsonSchema.format === 'starts_with') delete ctx.jsonSchema.format
    },
  }) as Record<string, unknown>
  return {
    $schema: schema.$schema,
    $id: 'https://breakwater.dev/schemas/proxy-config.schema.json',
    title: 'breakwater proxy config',
    ...schema,
    // Top-level extension fields (`x-defaults: &defaults`), which the loader ignores; zod has
    // no pattern for keys, so they are added here. Any other unknown key stays refused.
    patternProperties: { '^x-': {} },
  }
}
