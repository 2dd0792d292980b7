"""The AWS account's side of a JITP load test, through boto3: what JITP leaves
behind for a CA's devices, found and removed at the control plane's own rates."""
