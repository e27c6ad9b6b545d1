// Typed clients of the services a patient's phone may call, over any Connect transport (the
// browser's grpc-web transport in the app, Node's in the tests).
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { IamService } from "../gen/his/iam/v1/iam_service_pb.js";
import { PatientService } from "../gen/his/patient/v1/patient_service_pb.js";
import { SchedulingService } from "../gen/his/scheduling/v1/scheduling_service_pb.js";

/** One client per service, all sharing one transport (one origin, one token interceptor). */
export interface HisClients {
  readonly iam: Client<typeof IamService>;
  readonly patient: Client<typeof PatientService>;
  readonly scheduling: Client<typeof SchedulingService>;
}

export function createHisClients(transport: Transport): HisClients {
  return {
    iam: createClient(IamService, transport),
    patient: createClient(PatientService, transport),
    scheduling: createClient(SchedulingService, transport),
  };
}
