// Writes docs/proxy-config.schema.json from the proxy config's zod schema:
// `npx tsx scripts/proxy-schema.ts` (test/proxy/config/json-schema.test.ts fails when the
// shipped file is stale).
import { writeFileSync } from 'node:fs'
import { proxyConfigJsonSchema } from '../src/proxy/config/json-schema.js'

const target = new URL('../docs/proxy-config.schema.json', import.meta.url)
writeFileSync(target, `${JSON.stringify(proxyConfigJsonSchema(), null, 2)}\n`)
process.stdout.write(`wrote ${target.pathname}\n`)
