import { describeBrokerConformance } from './conformance.js'

describeBrokerConformance({ name: 'redis', dedupe: false })
