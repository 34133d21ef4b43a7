// Checks real answers against src/api/openapi.json: the operation is found by path template and
// method, the response by status (or `default`), and a JSON body is validated with ajv (JSON
// Schema 2020-12, which OpenAPI 3.1 uses). Formats are not checked (no ajv-formats).
import Ajv2020 from 'ajv/dist/2020';
import OPENAPI from '../../../src/api/openapi.json';
import { API_PREFIX } from '../../../src/exports/types';


interface MediaType { schema?: unknown }
interface ResponseObject { $ref?: string; content?: Record<string, MediaType>; headers?: Record<string, unknown> }
type Operation = { responses: Record<string, ResponseObject> };

const doc = OPENAPI as unknown as {
  paths: Record<string, Record<string, Operation>>;
  components: { responses: Record<string, ResponseObject> };
};

const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
ajv.addSchema(OPENAPI, 'openapi');

const pointer = (...parts: string[]): string => parts.map((part) => part.replace(/~/g, '~0').replace(/\//g, '~1')).join('/');

/** Path templates as regular expressions, literal ones first. */
const templates = Object.keys(doc.paths).map((template) => ({
  template,
  regex: new RegExp(`^${template.replace(/[.]/g, '\\.').replace(/\{[^}]+\}/g, '[^/]+')}/?$`),
}));

export function templateOf(path: string): string | undefined {
  if (!path.startsWith(`${API_PREFIX}/`)) return undefined;
  const rest = path.slice(API_PREFIX.length);
  return templates.find(({ regex }) => regex.test(rest))?.template;
}

export interface Answer {
  method: string;
  /** Request path without the query, as sent (percent-encoded). */
  path: string;
  status: number;
  contentType: string | undefined;
  body: Buffer;
}

/** What is wrong with `answer` according to the description; empty when it conforms. */
export function openApiProblems(answer: Answer): string[] {
  const where = `${answer.method} ${answer.path} -> ${answer.status}`;
  const template = templateOf(answer.path);
  const method = answer.method.toLowerCase();
  // HEAD is answered wherever GET is (info.description).
  const operationName = template === undefined ? undefined
    : doc.paths[template][method] !== undefined ? method : method === 'head' ? 'get' : undefined;
  let responsePointer: string;
  let response: ResponseObject | undefined;
  if (template === undefined || operationName === undefined) {
    // Unknown path, or a method the path does not take (404, 405; or what the HTTP parser
    // refused before routing): a refusal with the generic error answer.
    if (answer.status < 400 || answer.status >= 500) return [`${where}: a request no operation takes must be refused with a 4xx`];
    responsePointer = pointer('components', 'responses', 'Error');
    response = doc.components.responses.Error;
  } else {
    const responses = doc.paths[template][operationName].responses;
    // `default` covers refusals; every success must be described as such.
    if (answer.status < 400 && !(String(answer.status) in responses)) return [`${where}: status not described`];
    const status = String(answer.status) in responses ? String(answer.status) : 'default';
    responsePointer = pointer('paths', template, operationName, 'responses', status);
    response = responses[status];
  }
  if (response?.$ref !== undefined) {
    const name = response.$ref.split('/').at(-1)!;
    responsePointer = pointer('components', 'responses', name);
    response = doc.components.responses[name];
  }
  if (response === undefined) return [`${where}: not described`];
  if (answer.method === 'HEAD' || response.content === undefined) return [];
  const mediaType = (answer.contentType ?? '').split(';')[0].trim().toLowerCase();
  const media = response.content[mediaType];
  if (media === undefined) return [`${where}: Content-Type ${answer.contentType} is not one of ${Object.keys(response.content).join(', ')}`];
  if (mediaType !== 'application/json' || media.schema === undefined) return [];
  let value: unknown = '';
  if (answer.body.length > 0) {
    try {
      value = JSON.parse(answer.body.toString('utf8'));
    } catch {
      return [`${where}: the body is not JSON`];
    }
  }
  const validate = ajv.getSchema(`openapi#/${responsePointer}/content/${pointer(mediaType)}/schema`) ?? (() => false);
  if (validate(value)) return [];
  return [`${where}: ${ajv.errorsText((validate as { errors?: Parameters<typeof ajv.errorsText>[0] }).errors)}`];
}
